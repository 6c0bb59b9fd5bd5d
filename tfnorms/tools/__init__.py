"""Model-level tools: data-dependent initialization, stripping and converting
whole models. Public names are exported from `tfnorms` itself."""
