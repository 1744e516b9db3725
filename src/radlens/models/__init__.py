"""radlens.models: image and text towers, the CLIP-style dual encoder, the ViLT-style fusion model and
the checkpoint convention (``config.json`` + ``model.safetensors``). See docs/models.md."""

from radlens.models._staged import eval_mode
from radlens.models.checkpoint import (
    CheckpointInfo,
    load_checkpoint,
    model_fingerprint,
    read_checkpoint_info,
    register_model,
    registered_model_types,
    save_checkpoint,
)
from radlens.models.classifier import CheXpertClassifier, ClassifierConfig, masked_bce
from radlens.models.dual_encoder import DualEncoder, DualEncoderConfig, DualEncoderOutput, contrastive_loss
from radlens.models.fusion import (
    FusionConfig,
    FusionImageFeatures,
    FusionModel,
    FusionOutput,
    aligned_fusion_config,
    itm_loss,
    mask_tokens,
    mlm_loss,
)
from radlens.models.image_towers import (
    EfficientNetLite0Tower,
    ImageNormalization,
    ImageTower,
    ImageTowerConfig,
    SmallCNNTower,
    SmallViTTower,
    TowerOutput,
    build_image_tower,
    inference_chunk_size,
)
from radlens.models.text_towers import (
    MiniLMTextTower,
    SmallBertTextTower,
    TextOutput,
    TextTower,
    TextTowerConfig,
    Tokenizer,
    build_text_tower,
    load_tokenizer,
)
from radlens.models.vgg import VGGClassifier, VGGConfig

__all__ = [
    "CheXpertClassifier",
    "CheckpointInfo",
    "ClassifierConfig",
    "DualEncoder",
    "DualEncoderConfig",
    "DualEncoderOutput",
    "EfficientNetLite0Tower",
    "FusionConfig",
    "FusionImageFeatures",
    "FusionModel",
    "FusionOutput",
    "ImageNormalization",
    "ImageTower",
    "ImageTowerConfig",
    "MiniLMTextTower",
    "SmallBertTextTower",
    "SmallCNNTower",
    "SmallViTTower",
    "TextOutput",
    "TextTower",
    "TextTowerConfig",
    "Tokenizer",
    "TowerOutput",
    "VGGClassifier",
    "VGGConfig",
    "aligned_fusion_config",
    "build_image_tower",
    "build_text_tower",
    "contrastive_loss",
    "eval_mode",
    "inference_chunk_size",
    "itm_loss",
    "load_checkpoint",
    "load_tokenizer",
    "mask_tokens",
    "masked_bce",
    "mlm_loss",
    "model_fingerprint",
    "read_checkpoint_info",
    "register_model",
    "registered_model_types",
    "save_checkpoint",
]
