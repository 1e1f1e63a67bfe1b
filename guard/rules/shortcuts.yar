/*
    guard bundled rules: Windows .lnk shortcuts, Internet Shortcuts (.url) and freedesktop
    .desktop entries used as droppers.

    A .lnk is recognised by its 76-byte header (HeaderSize 0x4C followed by the
    ShellLinkHeader CLSID 00021401-0000-0000-C000-000000000046). Its target path and
    arguments may be stored in ANSI or in UTF-16LE, so every command-line string below is
    matched both as ascii and wide. A shortcut to powershell.exe or cmd.exe on its own is
    normal (the Start-menu "Windows PowerShell" shortcut is one); the rules need a
    living-off-the-land binary together with a remote URL, a hidden window, an encoded
    command or a command chain.
*/

rule LNK_PowerShell_Hostile_Arguments
{
    meta:
        description = "A Windows shortcut starts PowerShell with an encoded command, a download-and-run cradle or a hidden window fetching a URL."
        reference = "https://attack.mitre.org/techniques/T1059/001/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $ps1 = "powershell" ascii wide nocase
        $ps2 = "pwsh.exe" ascii wide nocase

        $enc1 = " -enc" ascii wide nocase
        $enc2 = " -encodedcommand" ascii wide nocase
        $enc3 = " -ec " ascii wide nocase
        $enc4 = " /enc" ascii wide nocase
        $enc5 = "FromBase64String" ascii wide nocase

        $dl1 = "DownloadString" ascii wide nocase
        $dl2 = "DownloadData" ascii wide nocase
        $dl3 = "Net.WebClient" ascii wide nocase
        $dl4 = "Invoke-WebRequest" ascii wide nocase
        $dl5 = "Invoke-RestMethod" ascii wide nocase
        $dl6 = "Start-BitsTransfer" ascii wide nocase
        $dl7 = "iwr http" ascii wide nocase
        $dl8 = "irm http" ascii wide nocase

        $iex1 = "Invoke-Expression" ascii wide nocase
        $iex2 = "iex(" ascii wide nocase
        $iex3 = "iex (" ascii wide nocase
        $iex4 = "|iex" ascii wide nocase
        $iex5 = "| iex" ascii wide nocase

        $hid1 = "-w hidden" ascii wide nocase
        $hid2 = "-win hidden" ascii wide nocase
        $hid3 = "-window hidden" ascii wide nocase
        $hid4 = "-windowstyle hidden" ascii wide nocase
        $hid5 = "-windowstyle 1" ascii wide nocase

        $url1 = "http://" ascii wide nocase
        $url2 = "https://" ascii wide nocase

    condition:
        uint32(0) == 0x0000004C and uint32(4) == 0x00021401 and uint32(8) == 0
        and uint32(12) == 0x000000C0 and uint32(16) == 0x46000000
        and filesize < 4MB
        and 1 of ($ps*)
        and (
            1 of ($enc*)
            or (1 of ($dl*) and (1 of ($iex*) or 1 of ($url*)))
            or (1 of ($iex*) and 1 of ($url*))
            or (1 of ($hid*) and 1 of ($url*))
        )
}

rule LNK_LOLBin_Proxy_Execution
{
    meta:
        description = "A Windows shortcut runs a script host or system binary that can proxy code (mshta, rundll32, regsvr32, certutil, bitsadmin, curl, wscript, cscript, PowerShell) with a URL, hidden window, encoded command or cmd chain."
        reference = "https://attack.mitre.org/techniques/T1218/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $lol1 = "powershell" ascii wide nocase
        $lol2 = "pwsh.exe" ascii wide nocase
        $lol3 = "mshta" ascii wide nocase
        $lol4 = "rundll32" ascii wide nocase
        $lol5 = "regsvr32" ascii wide nocase
        $lol6 = "certutil" ascii wide nocase
        $lol7 = "bitsadmin" ascii wide nocase
        $lol8 = "curl.exe" ascii wide nocase
        $lol9 = "curl -" ascii wide nocase
        $lol10 = "wscript" ascii wide nocase
        $lol11 = "cscript" ascii wide nocase
        $lol12 = "msiexec" ascii wide nocase

        $cmdc = /cmd(\.exe)?["']?\s{1,4}\/[ckr]\s/ ascii wide nocase

        $url1 = "http://" ascii wide nocase
        $url2 = "https://" ascii wide nocase
        $js1 = "javascript:" ascii wide nocase
        $js2 = "vbscript:" ascii wide nocase

        $hid1 = "-w hidden" ascii wide nocase
        $hid2 = "-windowstyle hidden" ascii wide nocase
        $hid3 = "-win hidden" ascii wide nocase
        $hid4 = "/min " ascii wide nocase
        $enc1 = " -enc" ascii wide nocase
        $enc2 = " -ec " ascii wide nocase

    condition:
        uint32(0) == 0x0000004C and uint32(4) == 0x00021401 and uint32(8) == 0
        and uint32(12) == 0x000000C0 and uint32(16) == 0x46000000
        and filesize < 4MB
        and (
            (1 of ($lol*) and (1 of ($url*) or 1 of ($js*) or 1 of ($hid*) or 1 of ($enc*)))
            or ($cmdc and 1 of ($lol*))
        )
}

rule LNK_Mshta_Remote_Script
{
    meta:
        description = "A Windows shortcut makes mshta fetch an HTA from a URL or run inline JavaScript/VBScript."
        reference = "https://attack.mitre.org/techniques/T1218/005/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $mshta = "mshta" ascii wide nocase
        $url1 = "http://" ascii wide nocase
        $url2 = "https://" ascii wide nocase
        $js1 = "javascript:" ascii wide nocase
        $js2 = "vbscript:" ascii wide nocase

    condition:
        uint32(0) == 0x0000004C and uint32(4) == 0x00021401 and uint32(8) == 0
        and uint32(12) == 0x000000C0 and uint32(16) == 0x46000000
        and filesize < 4MB
        and $mshta and (1 of ($url*) or 1 of ($js*))
}

rule LNK_Document_Double_Extension
{
    meta:
        description = "A Windows shortcut is named like a document (for example Invoice.pdf.lnk), and Explorer always hides the .lnk part."
        reference = "https://attack.mitre.org/techniques/T1036/007/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    condition:
        uint32(0) == 0x0000004C and uint32(4) == 0x00021401 and uint32(8) == 0
        and uint32(12) == 0x000000C0 and uint32(16) == 0x46000000
        and filename matches /\.(pdf|rtf|txt|csv|docx?|docm|xlsx?|xlsm|pptx?|ppsx?|odt|jpe?g|png|gif|mp3|mp4|mov|zip|rar|7z)[ \t_]{0,40}\.lnk$/i
}

rule URL_Shortcut_Remote_File_Target
{
    meta:
        description = "An Internet Shortcut (.url) opens a file:// or UNC network-share location instead of a web page, a way to fetch files from attacker shares and bypass SmartScreen."
        reference = "https://msrc.microsoft.com/update-guide/vulnerability/CVE-2024-21412"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $hdr = "[InternetShortcut]" ascii wide nocase
        $t1 = "URL=file:" ascii wide nocase
        $t2 = "URL=\\\\" ascii wide nocase
        $t3 = "URL=\"file:" ascii wide nocase

    condition:
        filesize < 1MB and $hdr and 1 of ($t*)
}

rule URL_Shortcut_Remote_Executable_Target
{
    meta:
        description = "An Internet Shortcut (.url) points through file:// or a UNC path at an executable, script or another shortcut on a remote share."
        reference = "https://msrc.microsoft.com/update-guide/vulnerability/CVE-2024-21412"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $hdr = "[InternetShortcut]" ascii wide nocase
        $t = /URL="?(file:[\\\/]{2,3}|\\\\)[^\r\n]{1,400}\.(exe|scr|hta|js|jse|vbs|vbe|wsf|wsh|bat|cmd|ps1|lnk|url|cpl|msi|jar|pif|com|dll|zip)\b/ ascii wide nocase

    condition:
        filesize < 1MB and $hdr and $t
}

rule URL_Shortcut_Remote_Icon_Forced_Auth
{
    meta:
        description = "An Internet Shortcut (.url) loads its icon from a remote SMB or WebDAV share, which makes Windows send the user's NTLM credentials when the folder is viewed."
        reference = "https://attack.mitre.org/techniques/T1187/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $hdr = "[InternetShortcut]" ascii wide nocase
        $i1 = "IconFile=\\\\" ascii wide nocase
        $i2 = "IconFile=file://" ascii wide nocase
        $i3 = "IconFile=http" ascii wide nocase

    condition:
        filesize < 1MB and $hdr and 1 of ($i*)
}

rule Desktop_Entry_Download_Execute
{
    meta:
        description = "A freedesktop .desktop launcher downloads a payload with curl or wget and pipes it to a shell or interpreter or marks it executable."
        reference = "https://attack.mitre.org/techniques/T1204/002/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $hdr = "[Desktop Entry]" ascii
        $exec = "Exec=" ascii
        // The spans exclude the separator they look for, so each match is tried once.
        $p1 = /(curl|wget)\s[^\r\n|]{1,300}\|\s{0,4}(sudo\s{1,4})?(\/usr)?(\/bin\/)?(ba|z|da)?sh\b/ ascii
        $p2 = /(curl|wget)\s[^\r\n|]{1,300}\|\s{0,4}(\/usr)?(\/bin\/)?(python[0-9.]{0,4}|perl)\b/ ascii
        $p3 = /(curl|wget)\s[^\r\n;&]{1,300}(;|&&)\s{0,4}chmod\s{1,4}(\+x|[0-7]{3,4})\s/ ascii

    condition:
        filesize < 1MB and $hdr and $exec and 1 of ($p*)
}

rule Desktop_Entry_Remote_Share_Target
{
    meta:
        description = "A freedesktop .desktop launcher opens or runs something from a remote SMB, NFS, SFTP or WebDAV share."
        reference = "https://attack.mitre.org/techniques/T1204/002/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $hdr = "[Desktop Entry]" ascii
        $x = /(URL|Exec)=[^\r\n]{0,300}(smb|nfs|sftp|davs?):\/\// ascii nocase

    condition:
        filesize < 1MB and $hdr and $x
}
