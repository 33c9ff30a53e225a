"""Trains every Fashion-MNIST run of the experiments, most informative first.

    python -m experiments.train_all --epochs=5

Order: seed 2019 of every method (Table 1, Table 2, Figure 6), then the other seeds
of the Table 2 methods. Safe to stop and start again: finished runs are skipped
and an interrupted one resumes from its last checkpoint. The report scripts
(``table1_bn_stats``, ``table2_fmnist``, ``figure6_full_width``) then read them.
"""

from __future__ import annotations

import argparse

from experiments import runner

TABLE2 = ("awn", "snet", "awn_rs", "usnet")
ORDER_FIRST_SEED = TABLE2 + ("standard", "awn_full", "standard_full")


def all_runs(seeds) -> list[runner.RunSpec]:
    first, *rest = seeds
    runs = [runner.spec(k, first) for k in ORDER_FIRST_SEED]
    return runs + [runner.spec(k, s) for s in rest for k in TABLE2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run (the paper: 100)")
    parser.add_argument("--seeds", default=",".join(map(str, runner.SEEDS)), help="comma-separated seeds")
    parser.add_argument("--workroot", default=runner.DEFAULT_WORKROOT, help="where the run workdirs go")
    args = parser.parse_args()
    runner.train(all_runs([int(s) for s in args.seeds.split(",")]), args.workroot, args.epochs)


if __name__ == "__main__":
    main()
