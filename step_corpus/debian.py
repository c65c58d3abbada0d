"""Fetch Debian packages over plain HTTP and read files out of them, in pure Python.

No apt or dpkg is needed: the mirror is read from /etc/apt when there is one (else
deb.debian.org), the suite's ``InRelease`` gives the sha256 of the ``Packages.xz`` index, and the
index gives the size and sha256 of every ``.deb``. When ``gpgv`` and Debian's archive keyring are
installed the ``InRelease`` signature is checked too; elsewhere the hashes still catch corrupt or
truncated downloads, and the manifest records that the signature was not checked.

A ``.deb`` is an ``ar`` archive whose ``data.tar.*`` member holds the files; it is streamed
through ``tarfile`` without unpacking anything to disk.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from step_common.errors import StepError

DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"  # Debian 12, the release the reference corpus was built from
COMPONENT = "main"
ARCH = "all"  # every source package used here is architecture-independent
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
HTTP_TIMEOUT_S = 60
_USER_AGENT = "step-model-corpus-build"


@dataclass(frozen=True)
class DebPackage:
    """One binary package as the Packages index describes it."""

    name: str
    version: str
    filename: str  # path relative to the mirror root, e.g. pool/main/g/...
    size: int
    sha256: str


# --- HTTP -------------------------------------------------------------------------------------


def _open_url(url: str, what: str) -> io.BufferedIOBase:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response: io.BufferedIOBase = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        raise StepError(
            f"{what} not found at {url} (HTTP {err.code}): the mirror may no longer carry this "
            "version; delete the cache's index folder and retry, or use another mirror"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise StepError(
            f"cannot download {what} from {url} ({reason}): check network access to the "
            "mirror/registry, or rerun with a cache folder that already holds the downloads"
        ) from None
    return response


def fetch_bytes(url: str, what: str) -> bytes:
    with _open_url(url, what) as response:
        try:
            return response.read()
        except OSError as err:
            raise StepError(f"download of {what} from {url} broke off ({err}): retry") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def matches(path: Path, size: int | None, sha256: str | None) -> bool:
    """Whether a cached file is present and has the expected size and hash."""
    if not path.is_file():
        return False
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or file_sha256(path) == sha256


def download(url: str, dest: Path, *, what: str, size: int | None, sha256: str | None) -> None:
    """Stream ``url`` to ``dest`` via a temporary file, verifying size and sha256 first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _open_url(url, what) as response:
            try:
                shutil.copyfileobj(response, out, 1 << 20)
            except OSError as err:
                raise StepError(f"download of {what} from {url} broke off ({err}): retry") from None
        if not matches(tmp, size, sha256):
            raise StepError(
                f"{what} from {url} does not match the size/sha256 in the Debian index: "
                "retry (the mirror may be mid-update) or use another mirror"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# --- mirror and index -------------------------------------------------------------------------


def _sources_entries(apt_dir: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of each ``deb`` entry in one-line and deb822 apt sources."""
    one_line = [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]
    for path in one_line:
        if path.is_file():
            yield from _one_line_entries(path.read_text(errors="replace"))
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        yield from _deb822_entries(path.read_text(errors="replace"))


def _one_line_entries(text: str) -> Iterator[tuple[str, list[str], list[str]]]:
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()  # drop [options]
        if len(words) >= 4 and words[0] == "deb":
            yield words[1], [words[2]], words[3:]


def _deb822_entries(text: str) -> Iterator[tuple[str, list[str], list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(_deb822_fields(stanza))
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            suites = fields.get("suites", "").split()
            components = fields.get("components", "").split()
            for uri in fields.get("uris", "").split():
                yield uri, suites, components


def _deb822_fields(stanza: str) -> Iterator[tuple[str, str]]:
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip() or line[0].isspace():
            continue
        key, _, value = line.partition(":")
        yield key.strip().lower(), value.strip()


def apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt already uses for bookworm main, or deb.debian.org."""
    for uri, suites, components in _sources_entries(apt_dir):
        if SUITE in suites and COMPONENT in components and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def clearsigned_body(text: str) -> str:
    """The signed text of a clearsigned message (OpenPGP armor and dash-escaping removed)."""
    if "-----BEGIN PGP SIGNED MESSAGE-----" not in text:
        return text
    body = text.split("\n\n", 1)[1].split("-----BEGIN PGP SIGNATURE-----", 1)[0]
    return "\n".join(line.removeprefix("- ") for line in body.splitlines())


def release_sha256(release_text: str) -> dict[str, tuple[int, str]]:
    """{path: (size, sha256)} from the SHA256 section of a Release/InRelease file."""
    out: dict[str, tuple[int, str]] = {}
    in_section = False
    for line in release_text.splitlines():
        if not line.startswith(" "):
            in_section = line.startswith("SHA256:")
            continue
        if in_section:
            digest, size, path = line.split()
            out[path] = (int(size), digest)
    return out


def parse_packages(text: str) -> dict[str, DebPackage]:
    """Packages index stanzas by package name (one stanza per name in a Debian suite)."""
    out: dict[str, DebPackage] = {}
    for stanza in text.split("\n\n"):
        fields = dict(_deb822_fields(stanza))
        if {"package", "version", "filename", "size", "sha256"} <= fields.keys():
            out[fields["package"]] = DebPackage(
                name=fields["package"],
                version=fields["version"],
                filename=fields["filename"],
                size=int(fields["size"]),
                sha256=fields["sha256"],
            )
    return out


def verify_signature(inrelease: Path) -> str:
    """Check InRelease with gpgv when that is possible; say what was done."""
    gpgv = shutil.which("gpgv")
    if gpgv is None or not KEYRING.is_file():
        return "not checked (gpgv or the Debian archive keyring is not installed)"
    result = subprocess.run(
        [gpgv, "--keyring", str(KEYRING), str(inrelease)], capture_output=True, check=False
    )
    if result.returncode != 0:
        raise StepError(
            f"the signature of {inrelease} does not verify with {KEYRING}: delete it and retry, "
            "or check that the mirror is a genuine Debian mirror"
        )
    return f"verified with gpgv against {KEYRING}"


class DebianArchive:
    """The bookworm ``main/binary-all`` index of one mirror, and a cache of its .deb files."""

    def __init__(
        self, mirror: str, cache_dir: Path, progress: Callable[[str], None] | None = None
    ) -> None:
        self.mirror = mirror.rstrip("/")
        self.cache_dir = cache_dir
        self.progress = progress or (lambda _msg: None)
        self.signature = "not checked"
        self._packages: dict[str, DebPackage] | None = None

    @property
    def _index_dir(self) -> Path:
        return self.cache_dir / "debian" / "dists" / SUITE

    def _release(self) -> str:
        """Fetch InRelease afresh (it is small and says which index is current); offline, fall
        back to the cached copy so that a full cache rebuilds without network."""
        path = self._index_dir / "InRelease"
        url = f"{self.mirror}/dists/{SUITE}/InRelease"
        try:
            data = fetch_bytes(url, f"the Debian {SUITE} release file")
        except StepError:
            if not path.is_file():
                raise
            self.progress(f"cannot reach {self.mirror}; using the cached {SUITE} index")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.signature = verify_signature(path)
        return clearsigned_body(path.read_text(encoding="utf-8", errors="replace"))

    def packages(self) -> dict[str, DebPackage]:
        if self._packages is None:
            rel_path = f"{COMPONENT}/binary-{ARCH}/Packages.xz"
            listed = release_sha256(self._release())
            if rel_path not in listed:
                raise StepError(
                    f"{self.mirror} lists no {rel_path} for {SUITE}: use a full Debian mirror"
                )
            size, sha256 = listed[rel_path]
            path = self._index_dir / rel_path
            if not matches(path, size, sha256):
                self.progress(f"downloading the {SUITE} package index ({size / 1e6:.1f} MB)")
                url = f"{self.mirror}/dists/{SUITE}/{rel_path}"
                download(url, path, what="the package index", size=size, sha256=sha256)
            self._packages = parse_packages(lzma.decompress(path.read_bytes()).decode("utf-8"))
        return self._packages

    def get(self, name: str) -> DebPackage:
        try:
            return self.packages()[name]
        except KeyError:
            raise StepError(
                f"package {name} is not in Debian {SUITE} {COMPONENT} at {self.mirror}: "
                "use a complete Debian 12 mirror"
            ) from None

    def fetch(self, package: DebPackage) -> Path:
        """The verified .deb in the cache, downloaded first if missing or damaged."""
        path = self.cache_dir / "debian" / "pool" / Path(package.filename).name
        if not matches(path, package.size, package.sha256):
            self.progress(
                f"downloading {package.name} {package.version} ({package.size / 1e6:.1f} MB)"
            )
            url = f"{self.mirror}/{package.filename}"
            download(url, path, what=package.name, size=package.size, sha256=package.sha256)
        return path


# --- reading .deb files -----------------------------------------------------------------------

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def ar_members(f: io.BufferedIOBase) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each member of an ``ar`` archive, read from its headers."""
    if f.read(len(_AR_MAGIC)) != _AR_MAGIC:
        raise ValueError("not an ar archive")
    offset = len(_AR_MAGIC)
    while True:
        f.seek(offset)
        header = f.read(_AR_HEADER)
        if len(header) < _AR_HEADER:
            return
        if header[58:60] != b"`\n":
            raise ValueError(f"corrupt ar header at byte {offset}")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        yield name, offset + _AR_HEADER, size
        offset += _AR_HEADER + size + (size % 2)  # members are padded to even offsets


class _Slice(io.RawIOBase):
    """A read-only window onto ``size`` bytes of a file, so tarfile can stream one member."""

    def __init__(self, f: io.BufferedIOBase, offset: int, size: int) -> None:
        self._f, self._left = f, size
        f.seek(offset)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


def _zstd_reader(raw: io.RawIOBase, deb: Path) -> io.BufferedIOBase:
    """Debian uses xz; zstd appears in Ubuntu-built packages and needs an optional module."""
    try:
        zstandard = importlib.import_module("zstandard")  # optional, and untyped
    except ImportError:
        raise StepError(
            f"{deb} compresses its files with zstd: pip install zstandard, or use Debian's own "
            "xz-compressed packages"
        ) from None
    reader: io.BufferedIOBase = zstandard.ZstdDecompressor().stream_reader(raw)
    return reader


def iter_deb_files(deb: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(path, content) of each regular file in a .deb whose path (no leading "./") ``want``s."""
    with open(deb, "rb") as f:
        try:
            data = next(((n, o, s) for n, o, s in ar_members(f) if n.startswith("data.tar")), None)
        except ValueError as err:
            raise StepError(f"{deb} is not a Debian package ({err}): delete it and retry") from None
        if data is None:
            raise StepError(f"{deb} has no data.tar member: delete it and retry")
        name, offset, size = data
        with _open_tar(_Slice(f, offset, size), name, deb) as stream:
            for member in stream:
                path = member.name.removeprefix("./")
                if member.isfile() and want(path):
                    extracted = stream.extractfile(member)
                    if extracted is not None:
                        yield path, extracted.read()


def _open_tar(raw: io.RawIOBase, name: str, deb: Path) -> tarfile.TarFile:
    """A streaming reader of the data.tar member, by its compression suffix."""
    compression = name.rsplit(".", 1)[-1]
    if compression == "zst":
        return tarfile.open(fileobj=_zstd_reader(raw, deb), mode="r|")
    buffered = io.BufferedReader(raw)
    if compression == "xz":
        return tarfile.open(fileobj=buffered, mode="r|xz")
    if compression == "gz":
        return tarfile.open(fileobj=buffered, mode="r|gz")
    if compression == "bz2":
        return tarfile.open(fileobj=buffered, mode="r|bz2")
    if compression == "tar":
        return tarfile.open(fileobj=buffered, mode="r|")
    raise StepError(f"{deb} uses an unknown compression ({name}): use a Debian package")
