from setuptools import find_packages, setup

setup(
    name="ramvid",
    version="0.1.0",
    description="Random-mask video diffusion (RaMViD): one 3D-UNet diffusion model for video "
    "prediction, infilling and unconditional generation.",
    packages=find_packages(include=["ramvid", "ramvid.*"]),
    python_requires=">=3.10",
    # GPU users install their CUDA build of torch first; the Makefile pins the CPU build.
    install_requires=[
        # The oldest torch with every API ramvid calls: torch.nn.utils.get_total_norm (2.6),
        # torch.amp.GradScaler(device) and init_process_group(device_id=) (2.3), torch.compile and
        # scaled_dot_product_attention (2.0), torch.load(weights_only=True) (1.13). Newer APIs are
        # used only where present: fused AdamW on CPU (2.4), cudnn.conv.fp32_precision (2.9).
        "torch>=2.6",
        "numpy>=1.24",
        "scipy>=1.13",  # sqrtm is wrong on rank-deficient covariances before 1.13 (FVD)
        "blobfile>=0.11.0",
        "tqdm>=4.60",
        "av>=12,<19",
        "matplotlib>=3.6",
        "pytorch-msssim==1.0.0",
        "google-crc32c>=1.5",  # TFRecord checksums when preparing BAIR (datasets/bair.py)
    ],
    # The installed commands; scripts/*.py are the same commands run from a checkout.
    entry_points={
        "console_scripts": [
            "ramvid-train = ramvid.train.command:main",
            "ramvid-sample = ramvid.sample.command:sample_main",
            "ramvid-sample-long = ramvid.sample.command:sample_long_main",
            "ramvid-eval = ramvid.metrics.command:eval_main",
            "ramvid-demo = ramvid.demo.command:main",
        ],
    },
    extras_require={
        "mpi": ["mpi4py>=4.0", "mpich>=4.2"],
        "tb": ["tensorboard==2.20.0"],  # training curves and --sample_interval previews
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "tensorboard==2.20.0"],
    },
)
