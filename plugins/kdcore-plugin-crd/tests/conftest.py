def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs the kdcore CLI end to end in a subprocess")
