"""mstools: look inside MusicGen and steer it.

Layers (each imports only the ones before it): :mod:`mstools.core` (hook names, time, file formats,
errors) -> :mod:`mstools.testbed` (the embedded model) -> :mod:`mstools.model` (hook points,
HookedMusicGen, backends, loading) -> :mod:`mstools.data` (sources, pooling, caching, store) ->
:mod:`mstools.analysis` (probes, directions, projections, readouts, patching, sparse features) ->
:mod:`mstools.steering` -> :mod:`mstools.evaluation` (the instrument that measures steering) ->
:mod:`mstools.ui` (plots, widgets, reports, notebooks) -> :mod:`mstools.apps` (command line, demo).

>>> import mstools
>>> model = mstools.load_musicgen("testbed")          # offline, embedded
>>> model.hook_names[:3]
['hook_embed', 'blocks.0.hook_resid_pre', 'blocks.0.hook_attn_out']
"""
import logging as _logging
import warnings as _warnings

# audiocraft imports xformers unconditionally; its C++ kernels are not needed here (attention runs
# through torch's scaled_dot_product_attention), so its load warning is noise.
_logging.getLogger("xformers").setLevel(_logging.ERROR)
_warnings.filterwarnings("ignore", message=".*xFormers.*")

from mstools.core.errors import MissingWeightsError  # noqa: E402
from mstools.model.hooked import Cache, GenerationCache, GenerationOutput, HookedMusicGen  # noqa: E402
from mstools.model.loading import build_musicgen, load_musicgen  # noqa: E402

__version__ = "0.2.0"
__all__ = ["HookedMusicGen", "Cache", "GenerationCache", "GenerationOutput", "build_musicgen",
           "load_musicgen", "MissingWeightsError"]
