"""Export: a whole model to ONNX, TorchScript or ``torch.export`` checked against eager (:mod:`.model`), a U-Net
as int8 (:mod:`.quantize`), and a checkpoint as a package folder (:mod:`.package`; read back by
:mod:`resdense.engine.package`).

>>> from resdense.export import export_model, export_package                        # doctest: +SKIP
>>> export_model("runs/membrane/best.pt", "unet.onnx", format="onnx")            # doctest: +SKIP
>>> export_package("runs/membrane/best.pt", "membrane_unet")                       # doctest: +SKIP
"""

from .model import ExportError, ExportResult, export_model
from .package import export_package
from .quantize import quantize_checkpoint

__all__ = ["ExportError", "ExportResult", "export_model", "export_package", "quantize_checkpoint"]
