"""Entry-point module: kept light, the cache (numpy, tqdm) is imported on first use."""

import kdcore


@kdcore.hookimpl
def kdcore_callbacks():
    return [kdcore.Component(
        "teacher_cache", "kdcore_plugin_teacher_cache.callback:TeacherCache",
        "frozen teachers' tapped outputs computed once, stored as .npy files, read back by index")]
