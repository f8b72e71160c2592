"""`python -m kohya_gui [flags]` starts the studio (see `--help`)."""
import sys

from .cli import access_problems, build_parser


def run() -> int:
    args = build_parser().parse_args()
    _, refusal = access_problems(args)
    if refusal:                      # refuse before the (slow) Gradio import
        print(f"[kohya_gui] {refusal}", file=sys.stderr)
        return 2
    from .app import main
    return main(args=args)


if __name__ == "__main__":
    sys.exit(run())
