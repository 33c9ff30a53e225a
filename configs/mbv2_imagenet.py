"""MobileNetV2 (ImageNet layout, 224 px) on ImageNet with US-Net's recipe; `:smoke` runs on generated data.

Prepare the data once: ``python -m awn_jax.data imagenet2012 --raw=DIR_WITH_ILSVRC2012_TARS``
(or ``python -m awn_jax.data synthetic imagenet2012 --examples=256`` for a smoke test).
Recipe and defaults: ``awn_jax.config.imagenet_config``; override any field with --config.FIELD=VALUE.
"""

from awn_jax.config import imagenet_config


def get_config(arg: str = ""):
    return imagenet_config("mobilenet_v2_imagenet", arg)
