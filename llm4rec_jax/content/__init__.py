"""Item content: item texts encoded by the pretrained text encoder
(``llm4rec_jax.model.text_encoder``, BERT family, Hugging Face weights) and cached on disk."""

from llm4rec_jax.content.text_cache import item_text_embeddings, item_texts, table_text_embeddings
from llm4rec_jax.model.text_encoder import (BertConfig, BertEncoder, default_model_dir,
                                              encode_texts, hf_weight_shapes, load_pretrained,
                                              load_tokenizer, load_weights, pool,
                                              resolve_model_dir, tokenize)

__all__ = [
    'BertConfig', 'BertEncoder', 'default_model_dir', 'encode_texts', 'hf_weight_shapes',
    'item_text_embeddings', 'item_texts', 'load_pretrained', 'load_tokenizer', 'load_weights',
    'pool', 'resolve_model_dir', 'table_text_embeddings', 'tokenize',
]
