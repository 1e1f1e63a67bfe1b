/*
    guard bundled rules: Office VBA macros that run on open.

    An OLE2 compound file (D0 CF 11 E0 A1 B1 1A E1) is a .doc/.xls/.ppt or a raw
    vbaProject.bin (the macro part of a .docm/.xlsm, which the scanner sees as an archive
    member). VBA module source is stored with MS-OVBA compression: each module starts with
    literal bytes where a flag byte precedes every eight characters, so "Attribute VB_Name"
    appears as "\x00Attribut\x00e VB_Nam". Procedure and called-function names such as
    AutoOpen or Shell also sit uncompressed in the project's identifier table.

    A macro that runs on open is common in business documents, so these rules also need a
    command-execution or download primitive, and stay at "suspicious".
*/

rule Office_VBA_AutoExec_Shell_Command
{
    meta:
        description = "An Office document or VBA project has a macro that runs automatically on open or close and can start programs or shell commands."
        reference = "https://attack.mitre.org/techniques/T1059/005/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $attr1 = "Attribute VB_Name" ascii nocase
        $attr2 = { 00 41 74 74 72 69 62 75 74 00 65 20 56 42 5F 4E 61 6D }

        $auto1 = "AutoOpen" ascii nocase
        $auto2 = "Auto_Open" ascii nocase
        $auto3 = "Document_Open" ascii nocase
        $auto4 = "Workbook_Open" ascii nocase
        $auto5 = "AutoExec" ascii nocase
        $auto6 = "AutoClose" ascii nocase
        $auto7 = "Auto_Close" ascii nocase
        $auto8 = "Document_Close" ascii nocase
        $auto9 = "Workbook_Activate" ascii nocase
        $auto10 = "Workbook_BeforeClose" ascii nocase

        $sh1 = "WScript.Shell" ascii nocase
        $sh2 = "Shell.Application" ascii nocase
        $sh3 = "ShellExecute" ascii nocase
        $sh4 = "powershell" ascii nocase
        $sh5 = "cmd.exe" ascii nocase
        $sh6 = "cmd /c" ascii nocase
        $sh7 = "CreateProcess" ascii nocase
        $sh8 = "MacScript" ascii nocase
        $sh9 = "VBA.Shell" ascii nocase
        $sh10 = "Shell" ascii fullword
        $sh11 = "Win32_Process" ascii nocase

    condition:
        uint32(0) == 0xE011CFD0 and uint32(4) == 0xE11AB1A1
        and filesize < 50MB
        and 1 of ($attr*) and 1 of ($auto*) and 1 of ($sh*)
}

rule Office_VBA_AutoExec_Downloader
{
    meta:
        description = "An Office document or VBA project has a macro that runs automatically on open or close and can download files from the network."
        reference = "https://attack.mitre.org/techniques/T1059/005/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $attr1 = "Attribute VB_Name" ascii nocase
        $attr2 = { 00 41 74 74 72 69 62 75 74 00 65 20 56 42 5F 4E 61 6D }

        $auto1 = "AutoOpen" ascii nocase
        $auto2 = "Auto_Open" ascii nocase
        $auto3 = "Document_Open" ascii nocase
        $auto4 = "Workbook_Open" ascii nocase
        $auto5 = "AutoExec" ascii nocase
        $auto6 = "AutoClose" ascii nocase
        $auto7 = "Auto_Close" ascii nocase
        $auto8 = "Document_Close" ascii nocase
        $auto9 = "Workbook_Activate" ascii nocase
        $auto10 = "Workbook_BeforeClose" ascii nocase

        $dl1 = "URLDownloadToFile" ascii nocase
        $dl2 = "MSXML2.XMLHTTP" ascii nocase
        $dl3 = "MSXML2.ServerXMLHTTP" ascii nocase
        $dl4 = "Microsoft.XMLHTTP" ascii nocase
        $dl5 = "WinHttp.WinHttpRequest" ascii nocase
        $dl6 = "ADODB.Stream" ascii nocase
        $dl7 = "InternetOpenUrl" ascii nocase
        $dl8 = "Net.WebClient" ascii nocase
        $dl9 = "DownloadFile" ascii nocase

    condition:
        uint32(0) == 0xE011CFD0 and uint32(4) == 0xE11AB1A1
        and filesize < 50MB
        and 1 of ($attr*) and 1 of ($auto*) and 1 of ($dl*)
}

rule OOXML_VBA_Project_In_Macro_Free_Extension
{
    meta:
        description = "An Office Open XML package contains a VBA project but is named with a macro-free extension such as .docx or .xlsx."
        reference = "https://attack.mitre.org/techniques/T1036/008/"
        severity = "suspicious"
        date = "2026-11-25"
        author = "guard project"

    strings:
        $v1 = "word/vbaProject.bin" ascii nocase
        $v2 = "xl/vbaProject.bin" ascii nocase
        $v3 = "ppt/vbaProject.bin" ascii nocase

    condition:
        uint32(0) == 0x04034B50
        and filesize < 100MB
        and extension matches /^\.(docx|dotx|xlsx|xltx|pptx|potx|ppsx)$/
        and 1 of ($v*)
}
