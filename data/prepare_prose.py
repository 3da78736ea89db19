#!/usr/bin/env python3
"""Builds data/modern_zh.txt, modern Chinese prose for measuring text unlike the corpus.

Source: the Debian package debian-reference-zh-cn 2.100 (GPL-2+, (c) Osamu Aoki and the
translators), file /usr/share/debian-reference/debian-reference.zh-cn.txt.gz. Keeps the
paragraphs (blocks between blank lines, wrapped lines joined) of at least 30 characters
of which at least 85% are Han characters or Chinese punctuation: the running prose, not
the command listings and tables. Python 3 standard library only.

    apt-get download debian-reference-zh-cn && dpkg-deb -x debian-reference-zh-cn_*.deb dr
    python3 data/prepare_prose.py dr/usr/share/debian-reference/debian-reference.zh-cn.txt.gz
"""
import gzip
import re
import sys


def cjk(c):
    return "\u4e00" <= c <= "\u9fff" or c in "，。、；：？！（）“”《》「」…—"


def paragraphs(text):
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [l.strip() for l in block.split("\n") if l.strip()]
        out = ""
        for l in lines:
            # A wrap between two ASCII words was a space; between Han characters, nothing.
            if out and out[-1].isascii() and l[0].isascii():
                out += " "
            out += l
        if out:
            yield out


def main():
    src = sys.argv[1]
    dst = sys.argv[2] if len(sys.argv) > 2 else "data/modern_zh.txt"
    text = gzip.open(src, "rt", encoding="utf-8").read()
    seen, kept = set(), []
    for p in paragraphs(text):
        chars = [c for c in p if not c.isspace()]
        if len(p) >= 30 and sum(map(cjk, chars)) >= 0.85 * len(chars) and p not in seen:
            seen.add(p)
            kept.append(p)
    with open(dst, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(kept) + "\n")
    print(f"{dst}: {len(kept)} paragraphs, {sum(len(p.encode()) + 1 for p in kept)} bytes")


if __name__ == "__main__":
    main()
