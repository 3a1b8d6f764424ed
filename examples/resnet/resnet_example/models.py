"""A small ResNet (stem, two basic residual blocks with BatchNorm, global average pooling, a
linear head) in PyTorch, the same network in Keras, and ``torch_to_keras``, which copies the
torch initial weights into the Keras model so both frameworks start alike.

Both read channels-first images ``(N, C, H, W)`` as the data loader returns them: the Keras model
transposes to channels-last first. Every constant the frameworks default differently is set:
BatchNorm epsilon 1e-5 and momentum (torch 0.1 == Keras 0.9), and the padding of 3x3 convolutions
(torch pads one pixel on every side; Keras "same" pads a stride-2 convolution only after, so the
Keras model pads explicitly and convolves "valid").
"""

from __future__ import annotations

import numpy as np

WIDTHS = (16, 32)  # channels of the two residual blocks; the second halves the resolution
BN_EPS = 1e-5
BN_MOMENTUM_TORCH = 0.1


def build_torch(input_shape, num_classes):
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH)
            self.shortcut = nn.Sequential()
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                    nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH),
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = input_shape[0]
            self.stem = nn.Sequential(
                nn.Conv2d(c, WIDTHS[0], 3, 1, 1, bias=False),
                nn.BatchNorm2d(WIDTHS[0], eps=BN_EPS, momentum=BN_MOMENTUM_TORCH),
                nn.ReLU(),
            )
            self.block1 = BasicBlock(WIDTHS[0], WIDTHS[0], 1)
            self.block2 = BasicBlock(WIDTHS[0], WIDTHS[1], 2)
            self.head = nn.Linear(WIDTHS[1], num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.block2(self.block1(self.stem(x)))
            return self.head(x.mean(dim=(2, 3)))

    return ResNet()


def build_keras(input_shape, num_classes):
    import keras
    from keras import layers

    def conv_bn(x, filters: int, kernel: int, stride: int, name: str):
        if kernel == 3:
            x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        x = layers.Conv2D(filters, kernel, stride, padding="valid", use_bias=False, name=f"{name}_conv")(x)
        return layers.BatchNormalization(momentum=1 - BN_MOMENTUM_TORCH, epsilon=BN_EPS, name=f"{name}_bn")(x)

    def block(x, c_in: int, c_out: int, stride: int, name: str):
        out = layers.ReLU()(conv_bn(x, c_out, 3, stride, f"{name}_1"))
        out = conv_bn(out, c_out, 3, 1, f"{name}_2")
        shortcut = conv_bn(x, c_out, 1, stride, f"{name}_short") if stride != 1 or c_in != c_out else x
        return layers.ReLU()(layers.Add()([out, shortcut]))

    inputs = keras.Input(tuple(input_shape))
    x = layers.Permute((2, 3, 1))(inputs)  # (C, H, W) -> (H, W, C): Keras convolutions are channels-last
    x = layers.ReLU()(conv_bn(x, WIDTHS[0], 3, 1, "stem"))
    x = block(x, WIDTHS[0], WIDTHS[0], 1, "block1")
    x = block(x, WIDTHS[0], WIDTHS[1], 2, "block2")
    x = layers.GlobalAveragePooling2D()(x)
    # float32 logits whatever the policy (Keras' mixed-precision guide).
    logits = layers.Dense(num_classes, dtype="float32", name="head")(x)
    return keras.Model(inputs, logits)


# torch module prefix -> Keras layer-name prefix
_NAMES = {
    "stem.0": "stem_conv",
    "stem.1": "stem_bn",
    "block1.conv1": "block1_1_conv",
    "block1.bn1": "block1_1_bn",
    "block1.conv2": "block1_2_conv",
    "block1.bn2": "block1_2_bn",
    "block2.conv1": "block2_1_conv",
    "block2.bn1": "block2_1_bn",
    "block2.conv2": "block2_2_conv",
    "block2.bn2": "block2_2_bn",
    "block2.shortcut.0": "block2_short_conv",
    "block2.shortcut.1": "block2_short_bn",
}


def torch_to_keras(state: dict[str, np.ndarray], model) -> None:
    """Copy the torch initial weights into the Keras model: conv OIHW -> HWIO, linear (out, in) ->
    (in, out), BatchNorm weight/bias/running stats -> gamma/beta/moving stats."""
    for prefix, name in _NAMES.items():
        layer = model.get_layer(name)
        if name.endswith("_conv"):
            layer.set_weights([state[f"{prefix}.weight"].transpose(2, 3, 1, 0)])
        else:
            keys = ("weight", "bias", "running_mean", "running_var")
            layer.set_weights([state[f"{prefix}.{key}"] for key in keys])
    model.get_layer("head").set_weights([state["head.weight"].T, state["head.bias"]])
