"""Baseline for the README: hl7apy (PyPI), a widely used Python HL7 v2 library, parsing
the same ADT^A08 and RDE^O11 messages as `cargo bench -p kakehashi-mappings`.
hl7apy parses only (no FHIR output), so it is a lower bound on the work a converter
does. Run: python3 -m venv /tmp/v && /tmp/v/bin/pip install hl7apy && /tmp/v/bin/python bench/compare_hl7apy.py
"""
import re
import time
from pathlib import Path

from hl7apy.parser import parse_message

src = Path(__file__).resolve().parent.parent / "mappings" / "benches" / "translate.rs"
text = src.read_text(encoding="utf-8")


def const(name):
    m = re.search(r'const %s: &str = "(.*?)";\n' % name, text, re.S)
    return m.group(1).replace("\\\\", "\\").replace("\\r", "\r")


for name, key in (("ADT^A08 (ADT-00)", "ADT"), ("RDE^O11 (OMP-01)", "RDE")):
    msg = const(key).encode("iso2022_jp")
    best = 0.0
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.6:
            parse_message(msg.decode("iso2022_jp"), find_groups=False, validation_level=2)
            n += 1
        best = max(best, n / (time.perf_counter() - start))
    print(f"hl7apy {name}: {best:.0f} messages/s on one core (decode + parse only, no FHIR)")
