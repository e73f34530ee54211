"""OpenAI-compatible inference servers (vLLM, TGI, llama.cpp server, Ollama) as an InferenceBackend."""
