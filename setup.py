"""Build hook: compile the LD_PRELOAD library `libaegis_hooks.so` into the package.

It is a plain shared library, not a Python extension module, so the file name is fixed
(`aegis_mcp/netmon/libaegis_hooks.so`) instead of carrying the interpreter's ABI suffix, and
it links only libc (plus libdl/libpthread on older glibc).

Without a C compiler the package installs without the library: everything but netmon's preload
mode and the LD_PRELOAD MCP injection works without it, and those say how to get it
(`aegis_mcp.paths.hooks_library_missing`). A compiler that is there but fails still fails the
install, with its own output.
"""

import shutil
import sys
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildHooks(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # Called with the full dotted name or with its last part only, depending on the caller.
        parts = fullname.split(".")
        if parts[-1] == "libaegis_hooks":
            return "/".join([*parts[:-1], "libaegis_hooks.so"])
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # no PyInit_: this is not a Python module

    def build_extension(self, ext: Extension) -> None:
        compiler = self.compiler.compiler_so[0]
        if shutil.which(compiler) is None:
            # pip shows a build's output only when it fails (or with -v): the line that every
            # user sees is the one `--netmon=preload` says at run time.
            print(f"aegis-mcp: no C compiler ({compiler} not found): installing without the "
                  "netmon hooks library (--netmon=preload needs it: install gcc, then "
                  "install aegis-mcp again)", file=sys.stderr)
            return
        super().build_extension(ext)


hooks = Extension(
    "aegis_mcp.netmon.libaegis_hooks",
    sources=sorted(glob("src/aegis_mcp/netmon/hooks/*.c")),
    depends=sorted(glob("src/aegis_mcp/netmon/hooks/*.h")),
    extra_compile_args=["-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-std=gnu11"],
    extra_link_args=["-ldl", "-lpthread"],
)

setup(ext_modules=[hooks], cmdclass={"build_ext": BuildHooks})
