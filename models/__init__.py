"""Model cards shipped with facematch (installed as ``facematch.model_cards``). Cards only, never weights."""
