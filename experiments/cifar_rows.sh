#!/usr/bin/env bash
# The CIFAR rows of Table 2 (LeNet-3C1L and MobileNetV2 on CIFAR-10/100), one command per
# row and method, for a GPU/TPU machine with the official CIFAR python archives:
#
#   CIFAR10=/data/cifar-10-python.tar.gz CIFAR100=/data/cifar-100-python.tar.gz \
#     bash experiments/cifar_rows.sh ROW METHOD
#
# ROW: lenet_cifar10 | lenet_cifar100 | mbv2_cifar10 | mbv2_cifar100
# METHOD: awn | snet | awn_rs | usnet
# Each run trains, checkpoints (resuming if interrupted) and sweeps every width into
# workdirs/cifar/ROW/METHOD; then table2_fmnist-style AUCs come from its eval*/sweep.json.
# EXTRA="--config.FIELD=VALUE ..." appends overrides (e.g. a few steps to check the set-up).
set -euo pipefail
row=${1:?ROW: lenet_cifar10 | lenet_cifar100 | mbv2_cifar10 | mbv2_cifar100}
method=${2:?METHOD: awn | snet | awn_rs | usnet}
case $row in
  *cifar100) raw=${CIFAR100:?set CIFAR100 to cifar-100-python.tar.gz} ;;
  *) raw=${CIFAR10:?set CIFAR10 to cifar-10-python.tar.gz} ;;
esac
four="--config.widths.mode=fixed"
case $row:$method in
  lenet_*:awn) args="$four" ;;
  lenet_*:snet) args="$four --config.variant=snet" ;;
  lenet_*:awn_rs) args="--config.widths.mode=sandwich" ;;
  lenet_*:usnet) args="--config.variant=usnet --config.widths.mode=sandwich" ;;
  # MobileNetV2 (paper, section 5): AWN 700 epochs, lr x0.1 at epochs 500 and 600 (CIFAR-10);
  # AWN+RS is the config's default (350 epochs, x0.1 at 250 and 300); S-Net and US-Net
  # decay the learning rate linearly per step.
  mbv2_*:awn) args="$four --config.num_epochs=700 --config.optim.milestones=(0.714286,0.857143)" ;;
  mbv2_*:snet) args="$four --config.variant=snet --config.optim.schedule=linear" ;;
  mbv2_*:awn_rs) args="" ;;
  mbv2_*:usnet) args="--config.variant=usnet --config.optim.schedule=linear" ;;
  *) echo "unknown row/method: $row $method" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086  # the argument lists are meant to split
exec python -m awn_jax.main --config="configs/$row.py" --workdir="workdirs/cifar/$row/$method" \
  --config.data.raw="$raw" $args ${EXTRA:-}
