"""Typed run configuration (the ground floor: imports nothing else of the package).

Sections are dataclasses whose fields are declared once with `option` (`options.py`); the core sections are in
`sections.py`, the whole run's `TrainConfig`, presets and YAML in `train.py`. Methods add sections of their own.
"""

from deepcluster.config.options import (
    ConfigError,
    OptionInfo,
    check_section,
    option,
    option_error,
    option_info,
    parse_set,
    section_options,
)
from deepcluster.config.sections import (
    CORE_SECTIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SMALL_INPUT_LIMIT,
    AugmentConfig,
    ClusterConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    default_resize,
)
from deepcluster.config.train import (
    DEFAULT_METHOD,
    PRESET_METHODS,
    PRESETS,
    MethodCatalog,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    preset_config,
    preset_method,
    read_yaml,
)

__all__ = [
    "CORE_SECTIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_METHOD",
    "PRESETS",
    "PRESET_METHODS",
    "SMALL_INPUT_LIMIT",
    "AugmentConfig",
    "ClusterConfig",
    "ConfigError",
    "DataConfig",
    "MethodCatalog",
    "ModelConfig",
    "OptimConfig",
    "OptionInfo",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "check_section",
    "config_from_dict",
    "default_resize",
    "dump_config",
    "load_config",
    "option",
    "option_error",
    "option_info",
    "parse_set",
    "preset_config",
    "preset_method",
    "read_yaml",
    "section_options",
]
