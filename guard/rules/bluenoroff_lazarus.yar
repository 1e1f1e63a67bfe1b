/*
    guard bundled rules: publicly reported BlueNoroff / Lazarus (DPRK) tradecraft.

    Every rule describes behaviour, file names, command lines or lure text that the cited
    public report describes. None of them is built from hashes or bytes of real samples.

    AppleScript lures reach users either as plain text (a .scpt/.applescript file that
    Script Editor compiles on open) or as compiled scripts (files starting "FasdUAS").
    Compiled scripts keep string literals as UTF-16 big-endian text; a `wide` YARA string
    (UTF-16LE) still matches such text whenever another ASCII character follows it, so the
    literal strings below are matched both ascii and wide. AppleScript keywords such as
    "do shell script" are not stored as text in compiled scripts, hence the "FasdUAS"
    alternative.
*/

import "math"

rule BlueNoroff_AppleScript_Blankline_Padded_Curl_Exec
{
    meta:
        description = "An AppleScript padded with thousands of blank lines to push a curl download-and-run command out of view of the Script Editor window, as in BlueNoroff's fake Zoom extension."
        reference = "https://www.huntress.com/blog/inside-bluenoroff-web3-intrusion-analysis"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $dss = "do shell script" ascii nocase
        $curl = "curl " ascii wide nocase
        $x1 = "| sh" ascii wide
        $x2 = "|sh" ascii wide
        $x3 = "| bash" ascii wide
        $x4 = "|bash" ascii wide
        $x5 = "| zsh" ascii wide
        $x6 = "|zsh" ascii wide
        $x7 = "osascript" ascii wide
        $x8 = "run script" ascii nocase
        $x9 = "chmod +x" ascii wide

    condition:
        filesize < 8MB
        and ($dss or uint32be(0) == 0x46617364)
        and $curl and 1 of ($x*)
        and (math.count(0x0A) + math.count(0x0D)) >= 1000
        and (math.count(0x0A) + math.count(0x0D)) * 2 > filesize
}

rule BlueNoroff_GhostCall_Fake_Meeting_SDK_Update_Script
{
    meta:
        description = "An AppleScript posing as a Zoom or Microsoft Teams SDK or client update that downloads the next stage with curl and runs it, the GhostCall fake-meeting lure."
        reference = "https://securelist.com/bluenoroff-apt-campaigns-ghostcall-and-ghosthire/117842/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $dss = "do shell script" ascii nocase

        $lure1 = "Zoom SDK" ascii wide nocase
        $lure2 = "Teams SDK" ascii wide nocase
        $lure3 = "zoom_sdk" ascii wide nocase
        $lure4 = "teams_sdk" ascii wide nocase
        $lure5 = "Zoom Meeting SDK" ascii wide nocase
        $lure6 = "SDK Update" ascii wide nocase
        $lure7 = "developer.zoom.us" ascii wide nocase
        $lure8 = "Zoom Workplace update" ascii wide nocase
        $lure9 = "Teams update" ascii wide nocase

        $curl = "curl " ascii wide nocase

        $x1 = "| sh" ascii wide
        $x2 = "|sh" ascii wide
        $x3 = "| bash" ascii wide
        $x4 = "|bash" ascii wide
        $x5 = "| zsh" ascii wide
        $x6 = "|zsh" ascii wide
        $x7 = "osascript" ascii wide
        $x8 = "run script" ascii nocase

    condition:
        filesize < 8MB
        and ($dss or uint32be(0) == 0x46617364)
        and 1 of ($lure*) and $curl and 1 of ($x*)
}

rule SapphireSleet_Zoom_SDK_Update_Curl_Osascript_Chain
{
    meta:
        description = "An AppleScript fetches further AppleScript with curl using the mac-cur user agents or the fix/mac/update URL paths and hands it to osascript, as in Sapphire Sleet's fake Zoom SDK Update.scpt."
        reference = "https://www.microsoft.com/en-us/security/blog/2026/04/16/dissecting-sapphire-sleets-macos-intrusion-from-lure-to-compromise/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $curl = "curl" ascii wide nocase
        $ua = /mac-cur[1-9]/ ascii wide
        $path1 = "/fix/mac/update/version/" ascii wide
        $path2 = "/fix/mac/update/status/" ascii wide
        $osa1 = "osascript" ascii wide
        $osa2 = "run script" ascii wide nocase

    condition:
        filesize < 8MB and $curl and 1 of ($osa*) and ($ua or 1 of ($path*))
}

rule BlueNoroff_RustBucket_Internal_PDF_Viewer_Dropper
{
    meta:
        description = "A script or applet that downloads, unpacks and opens an Internal PDF Viewer app under /Users/Shared, the RustBucket first stage."
        reference = "https://www.jamf.com/blog/bluenoroff-apt-targets-macos-rustbucket-malware/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $name = "Internal PDF Viewer" ascii wide
        $dir = "/Users/Shared" ascii wide
        $c1 = "curl " ascii wide
        $c2 = "unzip " ascii wide
        $c3 = "ErrorCheck.zip" ascii wide

    condition:
        filesize < 20MB and $name and $dir and 1 of ($c*)
}

rule BlueNoroff_RustBucket_LaunchAgent_Persistence
{
    meta:
        description = "A launch agent or binary that sets up the com.apple.systemupdate launch agent running ~/Library/Metadata/System Update, the RustBucket persistence."
        reference = "https://www.elastic.co/security-labs/DPRK-strikes-using-a-new-variant-of-rustbucket"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $label = "com.apple.systemupdate" ascii wide
        $path = "Library/Metadata/System Update" ascii wide

    condition:
        filesize < 20MB and $label and $path
}

rule BlueNoroff_MotW_Bypass_Disk_Image_Script_Lure
{
    meta:
        description = "An ISO or VHD/VHDX disk image that carries a script or shortcut next to a decoy document, the container BlueNoroff used so that the files inside lose the Mark-of-the-Web."
        reference = "https://securelist.com/bluenoroff-methods-bypass-motw/108383/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $conectix = "conectix" ascii
        $vhdx = "vhdxfile" ascii

        $s1 = ".VBS;1" ascii nocase
        $s2 = ".VBE;1" ascii nocase
        $s3 = ".BAT;1" ascii nocase
        $s4 = ".CMD;1" ascii nocase
        $s5 = ".HTA;1" ascii nocase
        $s6 = ".LNK;1" ascii nocase
        $s7 = ".WSF;1" ascii nocase
        $s8 = ".PS1;1" ascii nocase
        $s9 = ".JSE;1" ascii nocase
        $w1 = ".vbs" wide nocase
        $w2 = ".vbe" wide nocase
        $w3 = ".bat" wide nocase
        $w4 = ".cmd" wide nocase
        $w5 = ".hta" wide nocase
        $w6 = ".lnk" wide nocase
        $w7 = ".wsf" wide nocase
        $w8 = ".ps1" wide nocase
        $w9 = ".jse" wide nocase

        $d1 = ".DOC;1" ascii nocase
        $d2 = ".DOCX;1" ascii nocase
        $d3 = ".PDF;1" ascii nocase
        $d4 = ".PPT;1" ascii nocase
        $d5 = ".PPTX;1" ascii nocase
        $d6 = ".PPSX;1" ascii nocase
        $d7 = ".XLS;1" ascii nocase
        $d8 = ".XLSX;1" ascii nocase
        $e1 = ".docx" wide nocase
        $e2 = ".pdf" wide nocase
        $e3 = ".pptx" wide nocase
        $e4 = ".ppsx" wide nocase
        $e5 = ".xlsx" wide nocase
        $e6 = ".doc" wide nocase
        $e7 = ".ppt" wide nocase
        $e8 = ".xls" wide nocase

    condition:
        filesize < 200MB
        and (
            (filesize > 0x8006 and uint32be(0x8001) == 0x43443030 and uint8(0x8005) == 0x31)
            or $conectix at 0
            or (filesize > 512 and $conectix at filesize - 512)
            or $vhdx at 0
        )
        and (1 of ($s*) or 1 of ($w*))
        and (1 of ($d*) or 1 of ($e*))
}

rule BlueNoroff_SyncAppvPublishingServer_PowerShell_Proxy
{
    meta:
        description = "A script, shortcut or scheduled task runs PowerShell through the signed SyncAppvPublishingServer.vbs helper, as BlueNoroff did from a scheduled task."
        reference = "https://securelist.com/bluenoroff-methods-bypass-motw/108383/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $s = "SyncAppvPublishingServer.vbs" ascii wide nocase
        $p1 = "Start-Process" ascii wide nocase
        $p2 = "Invoke-Expression" ascii wide nocase
        $p3 = "DownloadString" ascii wide nocase
        $p4 = "Invoke-WebRequest" ascii wide nocase
        $p5 = "Net.WebClient" ascii wide nocase
        $p6 = "http://" ascii wide nocase
        $p7 = "https://" ascii wide nocase
        $p8 = "gal i*x" ascii wide nocase
        $p9 = "iex(" ascii wide nocase
        $p10 = "iex (" ascii wide nocase
        $p11 = "FromBase64String" ascii wide nocase
        $p12 = "powershell" ascii wide nocase

    condition:
        filesize < 10MB and $s and 1 of ($p*)
}

rule Lazarus_KandyKorn_Python_Drive_Dropper
{
    meta:
        description = "A Python script that downloads code from Google Drive into a file and then imports or runs it, the REF7001 first stages that led to KANDYKORN."
        reference = "https://www.elastic.co/security-labs/elastic-catches-dprk-passing-out-kandykorn"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $imp = "import " ascii
        $u1 = "urllib" ascii
        $u2 = "requests.get" ascii
        $u3 = "urlopen" ascii
        $g1 = "drive.google.com" ascii
        $g2 = "drive.usercontent.google.com" ascii
        $x1 = "importlib" ascii
        $x2 = "__import__" ascii
        $x3 = "exec(" ascii
        $x4 = "subprocess" ascii
        $x5 = "os.system" ascii
        $x6 = "os.popen" ascii
        $t1 = "/Users/Shared/" ascii
        $t2 = "testSpeed" ascii
        $t3 = "FinderTools" ascii

    condition:
        filesize < 2MB and $imp and 1 of ($u*) and 1 of ($g*) and 1 of ($x*) and 1 of ($t*)
}

rule Lazarus_BeaverTail_JS_Wallet_Stealer
{
    meta:
        description = "JavaScript that reads crypto-wallet browser extension storage and other secrets and loads a next stage, the BeaverTail stealer of the Contagious Interview fake job campaign."
        reference = "https://unit42.paloaltonetworks.com/two-campaigns-by-north-korea-bad-actors-target-job-hunters/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $js1 = "require(" ascii
        $js2 = "child_process" ascii
        $js3 = "process.platform" ascii

        $w1 = "nkbihfbeogaeaoehlefnkodbefgpgknn" ascii
        $w2 = "ejbalbakoplchlghecdalmeeeajnimhm" ascii
        $w3 = "bfnaelmomeimhlpmgjnjophhpkkoljpa" ascii
        $w4 = "hnfanknocfeofbddgcijnmhnfnkdnaad" ascii
        $w5 = "ibnejdfjmmkpcnlpebklmnkoeoihofec" ascii
        $w6 = "fhbohimaelbohpjbbldcngcnapndodjp" ascii

        $les = "Local Extension Settings" ascii

        $a1 = "solana/id.json" ascii
        $a2 = "login.keychain" ascii
        $a3 = "/uploads" ascii
        $a4 = "/pdown" ascii
        $a5 = ".npl" ascii
        $a6 = ".pyp" ascii

    condition:
        filesize < 5MB and 1 of ($js*) and 2 of ($w*) and $les and 1 of ($a*)
}

rule Lazarus_InvisibleFerret_Python_Backdoor
{
    meta:
        description = "A Python backdoor with InvisibleFerret's ssh_* command handlers (ssh_kill, ssh_cmd, ssh_upload and others) plus its clipboard, keylogging, AnyDesk or browser-killing helpers."
        reference = "https://attack.mitre.org/software/S1245/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $imp = "import " ascii
        $kill = "ssh_kill" ascii

        $c1 = "ssh_obj" ascii
        $c2 = "ssh_cmd" ascii
        $c3 = "ssh_clip" ascii
        $c4 = "ssh_run" ascii
        $c5 = "ssh_upload" ascii
        $c6 = "ssh_any" ascii
        $c7 = "ssh_env" ascii

        $e1 = "pyperclip" ascii
        $e2 = "pyWinhook" ascii nocase
        $e3 = "anydesk" ascii nocase
        $e4 = "taskkill" ascii nocase
        $e5 = "killall" ascii
        $e6 = "/uploads" ascii nocase

    condition:
        filesize < 2MB and $imp and $kill and 2 of ($c*) and 1 of ($e*)
}
