"""`python -m train.ensemble --members K [train.main flags]`: train an ensemble of K models.

Member `k` is the `train.main` run of the same flags with `--seed` = base seed + k (the base is
`--seed`, or the preset's) in `WORKDIR/member_k`, trained one after another in this process;
re-running the command resumes each member, since each is a `train.main` workdir. When all are
done, `WORKDIR/ensemble.json` lists them (`jglow.save_ensemble`), so `jglow.load(WORKDIR)` gives
the mixture of the K best models (`jglow.ensemble`), and `WORKDIR/run.json` is a copy of
member 0's, naming the data and split for `python -m train.evaluate --model WORKDIR`.

Exit status as `train.main`: 0 done, 2 refused (`error: ...` on stderr), 1 stopped, 128 + the
signal's number after SIGTERM or Ctrl-C (the member checkpointed); a member that does not
finish stops the command there, and the ensemble is not written.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jglow
from jglow.files import replace_atomically
from jglow.saving import CONFIG_FILE
from jglow.train import cli
from jglow.train import main as train_main
from jglow.train.checkpoints import CHECKPOINT_DIR, RUN_FILE
from jglow.train.config import UsageError, build_parser, config_from_args


def member_dir(workdir, k: int) -> pathlib.Path:
    """The workdir of member `k`: `workdir/member_k`."""
    return pathlib.Path(workdir) / f"member_{k}"


def _members_flag() -> argparse.ArgumentParser:
    """A parser of `--members` alone, whose leftovers are the members' `train.main` flags."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--members", type=int)
    return parser


def build_ensemble_parser() -> argparse.ArgumentParser:
    """`train.main`'s command line with `--members`."""
    parser = build_parser()
    parser.description = ("Train an ensemble of K models: the train.main runs of these flags "
                          "with seeds --seed + k in WORKDIR/member_k, one after another, then "
                          "WORKDIR/ensemble.json (jglow.load(WORKDIR)). Re-running the same "
                          "command resumes every member.")
    parser.add_argument("--members", type=int, required=True,
                        help="number of members K >= 1; member k trains with --seed + k in "
                             "WORKDIR/member_k")
    return parser


@cli.command
def main(argv=None) -> int:
    """The command line: returns the exit status (module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_ensemble_parser().parse_args(argv)
    flags = _members_flag().parse_known_args(argv)[1]
    if args.members < 1:
        raise UsageError(f"--members {args.members}: expected an ensemble of at least 1 member")
    if args.coordinator is not None:
        raise UsageError("--coordinator: the members are trained one after another in one "
                         "process, which cannot join a multi-host run more than once; train "
                         "each member with python -m train.main and list them with "
                         "jglow.save_ensemble")
    base_seed = config_from_args(args).seed
    workdir = pathlib.Path(args.workdir)
    if (workdir / CONFIG_FILE).exists() or (workdir / CHECKPOINT_DIR).exists():
        raise UsageError(f"--workdir {workdir} holds a train.main run; an ensemble's "
                         f"workdir holds only its members (member_k), ensemble.json and "
                         f"run.json: choose another --workdir")
    members = [member_dir(workdir, k) for k in range(args.members)]
    for k, directory in enumerate(members):
        print(f"member {k} of {args.members}: seed {base_seed + k}, workdir {directory}",
              file=sys.stderr)
        status = train_main.main(flags + ["--workdir", str(directory),
                                          "--seed", str(base_seed + k)])
        if status != 0:
            return status
    jglow.save_ensemble(workdir, members)
    run_record = (members[0] / RUN_FILE).read_bytes()
    replace_atomically(workdir / RUN_FILE, lambda handle: handle.write(run_record))
    print(f"ensemble of {args.members} members (seeds {base_seed}..{base_seed + args.members - 1})"
          f" in {workdir} (jglow.load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
