"""mstools: look inside MusicGen and steer it.

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

from .hooked import Cache, GenerationCache, GenerationOutput, HookedMusicGen  # noqa: E402
from .models import MissingWeightsError, build_musicgen, load_musicgen  # noqa: E402

__version__ = "0.1.0"
__all__ = ["HookedMusicGen", "Cache", "GenerationCache", "GenerationOutput", "build_musicgen",
           "load_musicgen", "MissingWeightsError"]
