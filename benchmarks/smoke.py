"""What the benchmark scripts share: where their results go, and the ``--smoke`` mode the tests run.

Not a benchmark itself: ``tests/test_benchmarks.py`` runs every other script in this folder in its
smoke mode, so a change of signature in minidiff cannot break one unseen.
"""
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SMOKE_RESULTS = Path(__file__).resolve().parent.parent / "outputs" / "benchmarks-smoke"


def add_output_options(parser, default=RESULTS, help="folder of the results file"):
    parser.add_argument("--results", type=Path, default=default, help=help)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run of the same code (see SMOKE)")


def parse_args(parser, argv, smoke: dict, written=lambda args: args.results):
    """``--smoke`` swaps the defaults for ``smoke``'s, with results in ``SMOKE_RESULTS`` (options given on
    the command line still win), and a smoke run never writes into the committed results:
    ``written(args)`` is the folder the run would write into."""
    if parser.parse_known_args(argv)[0].smoke:
        parser.set_defaults(**{"results": SMOKE_RESULTS, **smoke})
    args = parser.parse_args(argv)
    folder = written(args)
    if args.smoke and folder is not None and Path(folder).resolve() == RESULTS.resolve():
        parser.error(f"--smoke does not write into {RESULTS}: give --results another folder")
    return args
