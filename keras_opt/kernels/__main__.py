"""``python3 -m keras_opt.kernels build``: build the fused kernels now; ``status``: show them."""

import json
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "status"
    if command not in ("build", "status"):
        print("usage: python3 -m keras_opt.kernels [build|status]", file=sys.stderr)
        return 2
    from keras_opt.kernels import build

    info = build.status()
    print(json.dumps(info, indent=1))
    return 0 if info["available"] or command == "status" else 1


if __name__ == "__main__":
    sys.exit(main())
