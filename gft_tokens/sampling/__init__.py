"""What every family's sampler shares (:mod:`gft_tokens.sampling.common`): logit filtering and draws, the
guidance arguments (``beta`` / ``cfg_scale`` / ``cfg_schedule``) and the cost counter :class:`SamplingStats`.

The samplers themselves live with their family (``gft_tokens/families/<name>/sampler.py``);
:func:`gft_tokens.families.sample_images` reaches any of them through the family registry.
"""

from .common import SamplingStats, categorical, filter_logits, sample_from_logits

__all__ = ["SamplingStats", "categorical", "filter_logits", "sample_from_logits"]
