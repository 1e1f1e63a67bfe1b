/*
    guard bundled rules: native executables hiding behind document, media or archive names.

    These rules look at magic bytes only (never at the `filetype` external, which can be
    empty for archive members) and at the `extension` / `filename` externals, which the
    scanner sets to the lower-case final extension with its dot and to the base name.

    A PE is recognised by "MZ" *and* the "PE\0\0" signature at e_lfanew, so a text file
    that merely starts with the letters "MZ" does not count. A Java class file shares the
    CAFEBABE magic with Mach-O universal binaries; the architecture count of a real
    universal binary is small, while a class file has its version number there (>= 45).
*/

rule Disguised_PE_Document_Extension
{
    meta:
        description = "A Windows PE executable carries a document, image, media or archive file extension."
        reference = "https://attack.mitre.org/techniques/T1036/008/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    condition:
        filesize > 64 and uint16(0) == 0x5A4D
        and uint32(0x3C) < 0x10000 and uint32(0x3C) + 4 <= filesize
        and uint32(uint32(0x3C)) == 0x00004550
        and extension matches /^\.(pdf|rtf|txt|csv|tsv|md|log|xml|json|html?|eml|msg|docx?|docm|dotx?|dotm|xlsx?|xlsm|xlsb|xltx?|pptx?|pptm|ppsx?|ppsm|potx|odt|ods|odp|odg|epub|xps|oxps|pages|numbers|key|jpe?g|png|gif|bmp|tiff?|webp|heic|ico|svg|psd|mp3|mp4|m4a|m4v|wav|flac|ogg|aac|wma|mov|avi|mkv|webm|wmv|zip|rar|7z|gz|tgz|bz2|xz|tar|cab)$/
}

rule Disguised_ELF_Document_Extension
{
    meta:
        description = "A Linux ELF executable or shared object carries a document, image, media or archive file extension."
        reference = "https://attack.mitre.org/techniques/T1036/008/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    condition:
        filesize > 52 and uint32(0) == 0x464C457F
        and (uint8(4) == 1 or uint8(4) == 2)
        and (uint8(5) == 1 or uint8(5) == 2)
        and uint8(6) == 1
        and extension matches /^\.(pdf|rtf|txt|csv|tsv|md|log|xml|json|html?|eml|msg|docx?|docm|dotx?|dotm|xlsx?|xlsm|xlsb|xltx?|pptx?|pptm|ppsx?|ppsm|potx|odt|ods|odp|odg|epub|xps|oxps|pages|numbers|key|jpe?g|png|gif|bmp|tiff?|webp|heic|ico|svg|psd|mp3|mp4|m4a|m4v|wav|flac|ogg|aac|wma|mov|avi|mkv|webm|wmv|zip|rar|7z|gz|tgz|bz2|xz|tar|cab)$/
}

rule Disguised_MachO_Document_Extension
{
    meta:
        description = "A macOS Mach-O executable, library or universal binary carries a document, image, media or archive file extension."
        reference = "https://attack.mitre.org/techniques/T1036/008/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    condition:
        filesize > 28
        and (
            uint32(0) == 0xFEEDFACE or uint32(0) == 0xFEEDFACF
            or uint32(0) == 0xCEFAEDFE or uint32(0) == 0xCFFAEDFE
            or ((uint32be(0) == 0xCAFEBABE or uint32be(0) == 0xCAFEBABF)
                and uint32be(4) >= 1 and uint32be(4) <= 20)
        )
        and extension matches /^\.(pdf|rtf|txt|csv|tsv|md|log|xml|json|html?|eml|msg|docx?|docm|dotx?|dotm|xlsx?|xlsm|xlsb|xltx?|pptx?|pptm|ppsx?|ppsm|potx|odt|ods|odp|odg|epub|xps|oxps|pages|numbers|key|jpe?g|png|gif|bmp|tiff?|webp|heic|ico|svg|psd|mp3|mp4|m4a|m4v|wav|flac|ogg|aac|wma|mov|avi|mkv|webm|wmv|zip|rar|7z|gz|tgz|bz2|xz|tar|cab)$/
}

rule Executable_Filename_Extension_Spoofing
{
    meta:
        description = "A Windows PE executable is named with a document extension before its real one or with a right-to-left override character to fake its extension."
        reference = "https://attack.mitre.org/techniques/T1036/007/"
        severity = "malicious"
        date = "2026-11-25"
        author = "guard project"

    condition:
        filesize > 64 and uint16(0) == 0x5A4D
        and uint32(0x3C) < 0x10000 and uint32(0x3C) + 4 <= filesize
        and uint32(uint32(0x3C)) == 0x00004550
        and (
            filename matches /\.(pdf|rtf|txt|csv|docx?|docm|xlsx?|xlsm|pptx?|odt|jpe?g|png|gif|bmp|mp3|mp4|mov|avi|zip|rar|7z)[ \t_]{0,40}\.(exe|scr|com|pif|cpl|msi)$/i
            or filename contains "\xE2\x80\xAE"
        )
}
