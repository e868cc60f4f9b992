"""The authors' reference implementations of the topology losses, vendored for the parity tests only.

Not part of the package: ``skelprep.torch.topology`` is written independently and the tests compare its numbers
with these. Each module names its source (repository, file, commit), its licence (full text in ``licenses/``) and
what was changed (imports, code paths the tests do not use); the arithmetic is the authors' as published.
"""
