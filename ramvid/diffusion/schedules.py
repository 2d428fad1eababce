"""Noise schedules (float64) and the choice of kept timesteps for respacing."""
import math

import numpy as np

NOISE_SCHEDULES = ("linear", "cosine")


def get_named_beta_schedule(name, num_diffusion_timesteps):
    """Betas (float64, shape (T,)) of the `linear` or `cosine` schedule."""
    if num_diffusion_timesteps < 1:
        raise ValueError(f"diffusion_steps={num_diffusion_timesteps} must be >= 1")
    if name == "linear":
        # Linear in beta, scaled so that any number of steps spans the same total noise as 1000.
        scale = 1000 / num_diffusion_timesteps
        if scale * 0.02 >= 1:
            raise ValueError(
                f"diffusion_steps={num_diffusion_timesteps} is too few for the linear schedule "
                "(beta would reach 1); use more steps and --timestep_respacing to sample fast"
            )
        return np.linspace(scale * 1e-4, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if name == "cosine":
        # beta_i = 1 - alpha_bar((i + 1) / T) / alpha_bar(i / T) of the continuous alpha-bar
        # cos^2, clipped at 0.999
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        steps = num_diffusion_timesteps
        return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                         for i in range(steps)], dtype=np.float64)
    raise ValueError(f"noise_schedule={name!r} is not one of: {', '.join(NOISE_SCHEDULES)}")


def space_timesteps(num_timesteps, section_counts, betas=None):
    """The original steps kept by `--timestep_respacing`.

    "ddimN": N evenly strided steps starting at 0 (the stride must divide evenly).
    "logsnrN": N steps evenly spread in log signal-to-noise ratio, first and last step
    included (needs the schedule's `betas`); what few-step solvers such as dpm++2m want.
    "a,b,c" (or one number): the process is cut into equal sections and section i keeps
    a (b, c) steps spread evenly over it, first and last step of the section included.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("logsnr"):
            return logsnr_timesteps(spec, betas)
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim"):])
            except ValueError:
                raise ValueError(f"timestep_respacing={spec!r}: 'ddim' must be followed by a "
                                 "number of steps, e.g. ddim50") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"timestep_respacing={spec!r}: {num_timesteps} steps cannot be cut into "
                f"{desired} evenly strided steps"
            )
        try:
            section_counts = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"timestep_respacing={spec!r} is not 'N', 'a,b,c' or 'ddimN'"
            ) from None
    if not section_counts or min(section_counts) < 1:
        raise ValueError(f"timestep_respacing={section_counts!r} needs positive step counts")

    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"timestep_respacing: cannot keep {count} steps of a section of {size} steps "
                f"(diffusion_steps={num_timesteps})"
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return set(kept)


def logsnr_timesteps(spec, betas):
    """The steps of "logsnrN": the step nearest to each of N log-SNR values evenly spaced from
    the first step's to the last's. Where the schedule is too coarse for that (two values
    nearest to one step), the widest remaining log-SNR gaps are split until N steps are kept."""
    try:
        desired = int(spec[len("logsnr"):])
    except ValueError:
        raise ValueError(f"timestep_respacing={spec!r}: 'logsnr' must be followed by a number "
                         "of steps, e.g. logsnr25") from None
    if betas is None:
        raise ValueError(f"timestep_respacing={spec!r} needs the noise schedule's betas")
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    log_snr = np.log(alphas_cumprod / (1.0 - alphas_cumprod))  # decreasing in t
    if not 2 <= desired <= len(log_snr):
        raise ValueError(f"timestep_respacing={spec!r}: needs 2 to {len(log_snr)} steps")
    targets = np.linspace(log_snr[0], log_snr[-1], desired)
    kept = {int(np.argmin(np.abs(log_snr - target))) for target in targets}
    while len(kept) < desired:
        steps = sorted(kept)
        splittable = [(log_snr[a] - log_snr[b], a, b) for a, b in zip(steps, steps[1:]) if b - a > 1]
        _, a, b = max(splittable)
        middle = (log_snr[a] + log_snr[b]) / 2
        kept.add(a + 1 + int(np.argmin(np.abs(log_snr[a + 1:b] - middle))))
    return kept
