"""Tools that measure and show the library (bench, gpucheck, demo, cli, info). The library
never imports them."""
