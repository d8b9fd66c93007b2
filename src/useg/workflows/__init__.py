"""End-to-end workflows built on the stages: :mod:`~useg.workflows.densify` (the 3D U-Net's
semi-automated mode), :mod:`~useg.workflows.demo` (the built-in demo) and
:mod:`~useg.workflows.synthetic` (the built-in synthetic data)."""
