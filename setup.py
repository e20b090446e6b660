"""Only the optional C extension lives here; everything else is in pyproject.toml.

``flarestream.producer._fastsend`` is AnalyticsSender's hot path for plain scalar
records. It is optional: where no C compiler is found the build goes on without it
(wheel, sdist install or editable install alike) and the sender runs its pure-Python
path: same records, same bytes, slower.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """``build_ext`` that does not list an optional extension it failed to build.

    An editable install links every listed output into place and stops at a missing
    one; a plain build_ext lists the extension whether it was built or not.
    """

    def get_output_mapping(self) -> dict[str, str]:
        mapping = super().get_output_mapping()
        return {built: dest for built, dest in mapping.items() if os.path.exists(built)}


setup(
    ext_modules=[
        Extension(
            "flarestream.producer._fastsend",
            sources=["producer/_fastsend.c"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
