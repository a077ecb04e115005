"""Backbones (AlexNet-BN, VGG-16-BN, ResNet), the fixed Sobel layer, heads and the architecture registry."""

from deepcluster.models.alexnet import AlexNetBN, alexnet_bn, alexnet_bn_small
from deepcluster.models.backbone import Backbone, ConvFCBackbone, channels_last
from deepcluster.models.heads import ClassifierHead, HierarchicalHead, MultiHead, PrototypeHead, linear_head
from deepcluster.models.init import init_deepcluster_weights
from deepcluster.models.registry import (
    ARCHITECTURES,
    FAMILIES,
    build_backbone,
    check_arch,
    default_arch_for,
    takes_any_input_size,
)
from deepcluster.models.resnet import ResNetBackbone, resnet18, resnet18_small, resnet50
from deepcluster.models.sobel import Sobel
from deepcluster.models.vgg import VGG16BN, vgg16_bn, vgg16_bn_small

__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "MultiHead",
    "PrototypeHead",
    "AlexNetBN",
    "Backbone",
    "ClassifierHead",
    "ConvFCBackbone",
    "HierarchicalHead",
    "ResNetBackbone",
    "Sobel",
    "VGG16BN",
    "alexnet_bn",
    "alexnet_bn_small",
    "build_backbone",
    "channels_last",
    "check_arch",
    "default_arch_for",
    "init_deepcluster_weights",
    "linear_head",
    "takes_any_input_size",
    "resnet18",
    "resnet18_small",
    "resnet50",
    "vgg16_bn",
    "vgg16_bn_small",
]
