"""Models for the benchmarks beside the built-in ones (``--model bench/models.py:NAME``)."""

from hwloop.models import ResNet


def resnet20_x075():
    """ResNet-20 at 3/4 width for Fashion-MNIST (1 input channel, 10 classes): 12/24/48 channels,
    widths that are not whole float32 vectors of 8 or 16 lanes, so rounding to the vector width
    cannot apply to them and a plan must find the aligned counts itself."""
    return ResNet((12, 24, 48), (3, 3, 3), 10, 1, imagenet_stem=False)
