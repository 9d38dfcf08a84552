"""Messages about which model bundles the configured backend can serve."""

MESSAGES = {
    "serving.unknown_version": {
        "en": "There is no registered model {version}. /model lists the recent versions.",
        "zh": "没有登记过模型 {version}。/model 会列出最近的版本。",
    },
    "serving.already_serving": {
        "en": "Model {version} is serving already.",
        "zh": "模型 {version} 已经在服务中。",
    },
    "admin_model.phase.export": {"en": "exporting to ONNX", "zh": "导出为 ONNX"},
    "serving.unservable": {
        "en": (
            "Model {version} cannot be served with BACKEND={backend}: it has no usable ONNX export. "
            "Run `python -m training export --model {path}`, then try again. The current model keeps serving."
        ),
        "zh": (
            "模型 {version} 无法以 BACKEND={backend} 提供服务：它没有可用的 ONNX 导出。"
            "请运行 `python -m training export --model {path}` 后再试。当前模型继续服务。"
        ),
    },
}
