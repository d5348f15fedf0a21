"""Data pipeline: raw text -> sentencepiece tokens -> Megatron indexed datasets -> GPT samples.

Modules (imported on demand, so worker processes stay light):
  tokenizer          SentencePieceTokenizer
  tokenizer_training train_tokenizer (tools/train_tokenizer.py)
  sources, records   reading jsonl / jsonl.gz / parquet / `datasets` inputs; bad-record reasons
  preprocess         parallel tokenization into indexed datasets (tools/preprocess_data.py)
  indexed_dataset    IndexedDataset (mmap reader), IndexedDatasetWriter (Megatron .bin/.idx)
  sample_index       document / sample / shuffle / blending indices, as Megatron-LM builds them
  index_cache        .npy cache of those indices, built by one rank
  gpt_dataset        GPTDataset, BlendedDataset, build_gpt_datasets
  sampler            batch_indices, ResumableSampler, micro_batch_tensors, make_data_loader
  assets             the bundled corpus and tokenizer (default_data_prefix, default_tokenizer_path)
"""
