"""Model-level tools: data-dependent initialization, stripping and converting
whole models. Public names are exported from `tfnorms` itself.

`walk` finds every layer a model tracks (one walk for every tool), `rebuild`
copies a model with layers replaced, `data_init` and `convert` are the tools,
`options` the tables of what `convert_model` puts in place, `report` what a
tool did.
"""

from tfnorms.tools.convert import convert_model, strip
from tfnorms.tools.data_init import data_init
from tfnorms.tools.report import Report

__all__ = ["Report", "convert_model", "data_init", "strip"]
