"""Messages about which model bundles the configured backend can serve."""

MESSAGES = {
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
