"""Coverage-guided runs of the Hypothesis fuzz targets with atheris (libFuzzer).

    .venv/bin/pip install atheris            # not a test dependency: optional
    .venv/bin/python tests/fuzz/atheris_run.py test_fuzz_address \\
        test_parse_gives_a_valid_address_that_round_trips_or_address_error -max_total_time=300

The first two arguments name a target (module in tests/fuzz, test function); the rest
go to libFuzzer.  Every input libFuzzer makes is handed to the target through
Hypothesis's ``fuzz_one_input``, so the same strategies build the values and the same
assertions check them; spoolbox's modules are instrumented so libFuzzer keeps the
inputs that reach new code.  A failing input is printed by Hypothesis and written by
libFuzzer as ``crash-*``; make it an ``@example`` of the target.  The daemon target
(``test_every_request_line_gets_one_well_formed_answer``) needs a pytest fixture and
cannot run here.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import atheris


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    module_name, test_name = sys.argv[1], sys.argv[2]
    sys.path.insert(0, str(Path(__file__).parent))
    with atheris.instrument_imports(include=["spoolbox"]):
        module = importlib.import_module(module_name)
    test = getattr(module, test_name)
    atheris.Setup([sys.argv[0], *sys.argv[3:]], test.hypothesis.fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
