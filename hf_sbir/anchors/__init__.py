"""Anchors of the shared embedding space: class-name embeddings (text), visual centres, GCN."""

from hf_sbir.anchors.text import CLIPTextEmbedder
from hf_sbir.anchors.text import ClassNameEmbedder
from hf_sbir.anchors.text import MiniLMEmbedder
from hf_sbir.anchors.text import UnknownClassNameError
from hf_sbir.anchors.text import Word2VecFileEmbedder
from hf_sbir.anchors.text import embedder_from_dict
from hf_sbir.anchors.text import get_class_name_embedder
from hf_sbir.anchors.text import normalize_class_name
