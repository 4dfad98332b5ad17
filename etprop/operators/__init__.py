"""Built-in ETP operators. Each is an `etprop.ETPPrimitive` registered under its name."""

from etprop.operators.conv import conv
from etprop.operators.dense import einsum, grouped_matmul, matmul
from etprop.operators.elementwise import element_wise
from etprop.operators.embedding import embedding
from etprop.operators.lora import lora_matmul
from etprop.operators.sparse import sparse_matmul

__all__ = ["matmul", "grouped_matmul", "einsum", "element_wise", "embedding", "conv",
           "sparse_matmul", "lora_matmul"]
