/*
    guard bundled rules: script droppers (JScript/VBScript under Windows Script Host,
    PowerShell, batch, HTA, Unix shell, Python, AppleScript) that download and run a next
    stage.

    Strings are matched as ascii and wide because Windows scripts are often saved as
    UTF-16LE. The rules look for a download primitive *and* an execution primitive in the
    same file; one of them alone is everyday scripting.
*/

rule WSH_Script_Download_Save_Execute
{
    meta:
        description = "A JScript or VBScript file fetches a URL with an XMLHTTP/WinHTTP object, writes it to disk with ADODB.Stream and runs it through a shell object."
        reference = "https://attack.mitre.org/techniques/T1059/005/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $obj1 = "CreateObject" ascii wide nocase
        $obj2 = "ActiveXObject" ascii wide nocase
        $obj3 = "GetObject" ascii wide nocase

        $sh1 = "WScript.Shell" ascii wide nocase
        $sh2 = "Shell.Application" ascii wide nocase

        $http1 = "MSXML2.XMLHTTP" ascii wide nocase
        $http2 = "MSXML2.ServerXMLHTTP" ascii wide nocase
        $http3 = "Microsoft.XMLHTTP" ascii wide nocase
        $http4 = "WinHttp.WinHttpRequest" ascii wide nocase

        $save1 = "ADODB.Stream" ascii wide nocase
        $save2 = "SaveToFile" ascii wide nocase

        $run1 = ".Run" ascii wide nocase
        $run2 = ".ShellExecute" ascii wide nocase
        $run3 = ".Exec(" ascii wide nocase

    condition:
        filesize < 5MB
        and 1 of ($obj*) and 1 of ($sh*) and 1 of ($http*) and 1 of ($save*) and 1 of ($run*)
}

rule WSH_Script_Download_Eval
{
    meta:
        description = "A JScript or VBScript file fetches a URL with an XMLHTTP/WinHTTP object and evaluates the response text as code."
        reference = "https://attack.mitre.org/techniques/T1059/005/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $obj1 = "CreateObject" ascii wide nocase
        $obj2 = "ActiveXObject" ascii wide nocase

        $http1 = "MSXML2.XMLHTTP" ascii wide nocase
        $http2 = "MSXML2.ServerXMLHTTP" ascii wide nocase
        $http3 = "Microsoft.XMLHTTP" ascii wide nocase
        $http4 = "WinHttp.WinHttpRequest" ascii wide nocase

        $ev1 = /(eval|ExecuteGlobal|Execute)\s{0,4}\(?\s{0,4}[A-Za-z_][A-Za-z0-9_]{0,40}\.responseText/ ascii wide nocase
        $ev2 = /new\s{1,4}Function\s{0,4}\(\s{0,4}[A-Za-z_][A-Za-z0-9_]{0,40}\.responseText/ ascii wide nocase

    condition:
        filesize < 5MB and 1 of ($obj*) and 1 of ($http*) and 1 of ($ev*)
}

rule PowerShell_Download_Cradle_Invoke_Expression
{
    meta:
        description = "PowerShell code downloads text from the network and runs it in memory with Invoke-Expression (IEX)."
        reference = "https://attack.mitre.org/techniques/T1059/001/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $dl1 = "DownloadString" ascii wide nocase
        $dl2 = "DownloadData" ascii wide nocase
        $dl3 = "Invoke-WebRequest" ascii wide nocase
        $dl4 = "Invoke-RestMethod" ascii wide nocase
        $dl5 = "Net.WebClient" ascii wide nocase
        $dl6 = "iwr http" ascii wide nocase
        $dl7 = "irm http" ascii wide nocase
        $dl8 = "Start-BitsTransfer" ascii wide nocase

        $iex1 = "Invoke-Expression" ascii wide nocase
        $iex2 = "iex(" ascii wide nocase
        $iex3 = "iex (" ascii wide nocase
        $iex4 = "|iex" ascii wide nocase
        $iex5 = "| iex" ascii wide nocase
        $iex6 = "gal i*x" ascii wide nocase
        $iex7 = "gcm i*x" ascii wide nocase
        $iex8 = "iex $" ascii wide nocase

    condition:
        filesize < 10MB and 1 of ($dl*) and 1 of ($iex*)
}

rule PowerShell_Hidden_Encoded_Launch
{
    meta:
        description = "A script starts PowerShell with a base64 encoded command together with a hidden window or a skipped profile."
        reference = "https://attack.mitre.org/techniques/T1027/010/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $ps1 = "powershell" ascii wide nocase
        $ps2 = "pwsh" ascii wide nocase

        $enc1 = " -enc " ascii wide nocase
        $enc2 = " -encodedcommand " ascii wide nocase
        $enc3 = " -ec " ascii wide nocase
        $enc4 = " -en " ascii wide nocase
        $enc5 = " -encod" ascii wide nocase

        $hid1 = "-w hidden" ascii wide nocase
        $hid2 = "-win hidden" ascii wide nocase
        $hid3 = "-window hidden" ascii wide nocase
        $hid4 = "-windowstyle hidden" ascii wide nocase
        $hid5 = "-w 1 " ascii wide nocase

        $nop1 = "-nop " ascii wide nocase
        $nop2 = "-noprofile" ascii wide nocase
        $nop3 = "-noni " ascii wide nocase
        $nop4 = "-noninteractive" ascii wide nocase

    condition:
        filesize < 10MB and 1 of ($ps*) and 1 of ($enc*) and (1 of ($hid*) or 1 of ($nop*))
}

rule Shell_Remote_Script_Piped_To_Interpreter
{
    meta:
        description = "A Unix shell script downloads a script with curl or wget and pipes it straight into a shell or interpreter."
        reference = "https://attack.mitre.org/techniques/T1059/004/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $p = /(curl|wget)\s[^\r\n|;&]{1,300}\|\s{0,4}(sudo\s{1,4}(-[A-Za-z]{1,4}\s{1,4}){0,3})?(\/usr)?(\/bin\/)?(ba|z|k|da)?sh\b/ ascii
        $q = /(curl|wget)\s[^\r\n|;&]{1,300}\|\s{0,4}(\/usr)?(\/bin\/)?(python[0-9.]{0,4}|perl|ruby|node|osascript)\b/ ascii

    condition:
        filesize < 5MB
        and (uint16(0) == 0x2123 or extension matches /^\.(sh|bash|zsh|ksh|command|tool)$/)
        and ($p or $q)
}

rule Shell_Base64_Decoded_Payload_Executed
{
    meta:
        description = "A command line decodes base64 text and pipes the result into a shell, the pattern of paste-this-command (ClickFix) lures and stagers."
        reference = "https://attack.mitre.org/techniques/T1140/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $b = /base64\s{1,4}(-d|-D|--decode|-di)\b[^\r\n|]{0,80}\|\s{0,4}(sudo\s{1,4})?(\/usr)?(\/bin\/)?(ba|z|k|da)?sh\b/ ascii wide nocase

    condition:
        filesize < 10MB and $b
}

rule Certutil_URLCache_Download
{
    meta:
        description = "A command line or shortcut uses certutil with -urlcache or -verifyctl to download a file from a URL."
        reference = "https://attack.mitre.org/techniques/T1105/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        // One command line: certutil ... -urlcache ... URL
        $cmd = /certutil(\.exe)?["']?\s[^\r\n]{0,100}[-\/](urlcache|verifyctl)[^\r\n]{0,300}(https?|ftp):\/\// ascii wide nocase
        // A shortcut keeps the target (certutil.exe) and its arguments in separate fields.
        $c = "certutil" ascii wide nocase
        $u1 = "-urlcache" ascii wide nocase
        $u2 = "/urlcache" ascii wide nocase
        $u3 = "-verifyctl" ascii wide nocase
        $h1 = "http://" ascii wide nocase
        $h2 = "https://" ascii wide nocase
        $h3 = "ftp://" ascii wide nocase

    condition:
        filesize < 10MB
        and (
            $cmd
            or (uint32(0) == 0x0000004C and uint32(4) == 0x00021401 and uint32(8) == 0
                and uint32(12) == 0x000000C0 and uint32(16) == 0x46000000
                and $c and 1 of ($u*) and 1 of ($h*))
        )
}

rule Bitsadmin_Transfer_Remote_Payload
{
    meta:
        description = "A command line or shortcut uses bitsadmin to transfer a file from a URL."
        reference = "https://attack.mitre.org/techniques/T1197/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $cmd = /bitsadmin(\.exe)?["']?\s[^\r\n]{0,60}\/(transfer|addfile)[^\r\n]{0,300}(https?|ftp):\/\// ascii wide nocase
        $b = "bitsadmin" ascii wide nocase
        $t1 = "/transfer" ascii wide nocase
        $t2 = "/addfile" ascii wide nocase
        $h1 = "http://" ascii wide nocase
        $h2 = "https://" ascii wide nocase

    condition:
        filesize < 10MB
        and (
            $cmd
            or (uint32(0) == 0x0000004C and uint32(4) == 0x00021401 and uint32(8) == 0
                and uint32(12) == 0x000000C0 and uint32(16) == 0x46000000
                and $b and 1 of ($t*) and 1 of ($h*))
        )
}

rule Mshta_Remote_Or_Inline_Script
{
    meta:
        description = "A command line runs mshta on a remote URL or on inline javascript:/vbscript: code."
        reference = "https://attack.mitre.org/techniques/T1218/005/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $m = /mshta(\.exe)?["']?\s{1,8}["']?(https?:\/\/|javascript:|vbscript:)/ ascii wide nocase

    condition:
        filesize < 10MB and $m
}

rule Batch_Curl_Download_Then_LOLBin_Execute
{
    meta:
        description = "A Windows batch file downloads a file with curl and then launches it through rundll32, mshta, regsvr32, a script host or start."
        reference = "https://securelist.com/bluenoroff-methods-bypass-motw/108383/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $echo = "@echo off" ascii wide nocase
        $curl1 = "curl " ascii wide nocase
        $curl2 = "curl.exe" ascii wide nocase
        $o1 = " -o " ascii wide
        $o2 = " -O " ascii wide
        $o3 = " --output " ascii wide nocase
        $o4 = "--remote-name" ascii wide nocase
        $o5 = " -o\"" ascii wide
        $h1 = "http://" ascii wide nocase
        $h2 = "https://" ascii wide nocase
        $x1 = "rundll32" ascii wide nocase
        $x2 = "mshta" ascii wide nocase
        $x3 = "regsvr32" ascii wide nocase
        $x4 = "wscript" ascii wide nocase
        $x5 = "cscript" ascii wide nocase
        $x6 = "start \"\"" ascii wide nocase
        $x7 = "start /b" ascii wide nocase
        $x8 = "start /min" ascii wide nocase

    condition:
        filesize < 2MB
        and ($echo or extension == ".bat" or extension == ".cmd")
        and 1 of ($curl*) and 1 of ($o*) and 1 of ($h*) and 1 of ($x*)
}

rule HTA_Shell_Command_Execution
{
    meta:
        description = "An HTML Application (HTA) creates a Windows shell object and runs commands with it."
        reference = "https://attack.mitre.org/techniques/T1218/005/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $hta = "<hta:application" ascii wide nocase
        $sh1 = "WScript.Shell" ascii wide nocase
        $sh2 = "Shell.Application" ascii wide nocase
        $r1 = ".Run" ascii wide nocase
        $r2 = ".ShellExecute" ascii wide nocase
        $r3 = ".Exec(" ascii wide nocase

    condition:
        filesize < 5MB
        and ($hta or extension == ".hta")
        and 1 of ($sh*) and 1 of ($r*)
}

rule Python_Exec_Encoded_Payload
{
    meta:
        description = "A Python script passes base64, zlib, marshal or codecs decoded data straight to exec(), hiding the code it runs."
        reference = "https://attack.mitre.org/techniques/T1027/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $imp = "import " ascii
        $e = /exec\s{0,2}\(\s{0,2}(base64\.b64decode|base64\.b85decode|base64\.b32decode|zlib\.decompress|marshal\.loads|codecs\.decode|bytes\.fromhex|__import__\(\s{0,2}['"](base64|zlib|marshal|codecs)['"]\))/ ascii

    condition:
        filesize < 5MB and $imp and $e
}

rule AppleScript_Shell_Download_Execute
{
    meta:
        description = "An AppleScript runs a shell command that downloads with curl and pipes the result to a shell or osascript, or runs it."
        reference = "https://attack.mitre.org/techniques/T1059/002/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $dss = "do shell script" ascii nocase
        $curl = "curl " ascii nocase
        $x1 = "| sh" ascii
        $x2 = "|sh" ascii
        $x3 = "| bash" ascii
        $x4 = "|bash" ascii
        $x5 = "| zsh" ascii
        $x6 = "|zsh" ascii
        $x7 = "osascript" ascii
        $x8 = "run script" ascii nocase
        $x9 = "chmod +x" ascii

    condition:
        filesize < 10MB and $dss and $curl and 1 of ($x*)
}
