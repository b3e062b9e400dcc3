"""flaxbert: BERT in JAX/Flax — pretrain, reproduce, fine-tune and ship.

The public API:
  BertConfig                         the model's hyper-parameters (flaxbert.config)
  BertForPreTraining, BertEncoder    the models (flaxbert.heads)
  from_pretrained(path)              (model, params) from a flaxbert, HF or TF1 checkpoint
  save_pretrained(dir, model, params, format="flaxbert" | "hf" | "tf1")
"""
from flaxbert.config import BertConfig
from flaxbert.errors import InputError
from flaxbert.heads import BertEncoder, BertForPreTraining, BertOutput, build_model, init_params
from flaxbert.model import BertModel
from flaxbert.pretrained import from_pretrained, save_pretrained

__all__ = ["BertConfig", "BertEncoder", "BertForPreTraining", "BertModel", "BertOutput", "InputError",
           "build_model", "from_pretrained", "init_params", "save_pretrained"]
__version__ = "0.1.0"
