"""cloc-mllm: localized CLIP encoders (CLOC), VESL pseudo-labelling, and a vision tower for MLLMs."""

from transformers import AutoConfig, AutoModel

from .configuration_cloc import CLOCConfig, PrompterConfig
from .modeling_cloc import CLOCModel, CLOCOutput

AutoConfig.register(CLOCConfig.model_type, CLOCConfig, exist_ok=True)
AutoConfig.register(PrompterConfig.model_type, PrompterConfig, exist_ok=True)
AutoModel.register(CLOCConfig, CLOCModel, exist_ok=True)

__all__ = ["CLOCConfig", "CLOCModel", "CLOCOutput", "PrompterConfig"]
__version__ = "0.1.0"
