"""TextNLP core: cloud-neutral gateway logic. Imports no cloud SDK, ever."""
