"""Messages for /retrain, /model and /rollback, and the retraining progress message sent to the admin."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    # Command menu descriptions (shown to admins only).
    "admin_model.command.retrain": {
        "en": "Retrain the model on corrections (admins)",
        "zh": "用更正数据重新训练模型（管理员）",
    },
    "admin_model.command.model": {"en": "Show the serving model (admins)", "zh": "查看当前模型（管理员）"},
    "admin_model.command.rollback": {
        "en": "Return to the previous model, or to VERSION with /rollback VERSION (admins)",
        "zh": "回退到上一个模型，或用 /rollback 版本号 切换到指定版本（管理员）",
    },
    "admin_model.admins_only": {"en": "This command is for admins only.", "zh": "此命令仅限管理员使用。"},
    # /retrain
    "admin_model.retrain.usage": {
        "en": "Usage: /retrain to start, /retrain status, /retrain cancel.",
        "zh": "用法：/retrain 开始训练，/retrain status 查看状态，/retrain cancel 取消。",
    },
    "admin_model.retrain.not_configured": {
        "en": "Retraining is not set up: set RETRAIN_BASE_DATA to the base data set (an ImageFolder directory or flowers102) and restart the bot.",
        "zh": "尚未配置重新训练：请将 RETRAIN_BASE_DATA 设为基础数据集（ImageFolder 目录或 flowers102），然后重启机器人。",
    },
    "admin_model.retrain.invalid_recipe": {
        "en": "The retraining settings (RETRAIN_RECIPE_CONFIG and the RETRAIN_* values) are invalid. Fix them and restart the bot.\nDetails: {error}",
        "zh": "重新训练的设置（RETRAIN_RECIPE_CONFIG 和各 RETRAIN_* 值）无效。请修正后重启机器人。\n技术细节：{error}",
    },
    "admin_model.retrain.already_running": {
        "en": "Retraining run #{run_id} is already running ({phase}). Use /retrain status or /retrain cancel.",
        "zh": "重新训练 #{run_id} 正在进行（{phase}）。请使用 /retrain status 或 /retrain cancel。",
    },
    "admin_model.retrain.start_failed": {
        "en": "Retraining run #{run_id} could not start. The serving model is unchanged.\nDetails: {error}",
        "zh": "重新训练 #{run_id} 无法启动。当前模型保持不变。\n技术细节：{error}",
    },
    # The progress message, edited while a run goes on.
    "admin_model.progress.header": {
        "en": "🔁 Retraining run #{run_id} from model {version}",
        "zh": "🔁 重新训练 #{run_id}，基于模型 {version}",
    },
    "admin_model.progress.phase": {"en": "Phase: {phase}", "zh": "阶段：{phase}"},
    "admin_model.progress.data": {
        "en": "Data: {corrections_train} corrected photos for training, {corrections_holdout} held out for the gate, {not_flower} “not a flower” and {unknown_species} “not in this list” photos for rejection; skipped {skipped_unknown_label} with labels the model does not have and {skipped_missing_file} whose file is gone.",
        "zh": "数据：{corrections_train} 张更正照片用于训练，{corrections_holdout} 张留作检验，{not_flower} 张“不是花”和 {unknown_species} 张“不在列表中”照片用于拒识；跳过 {skipped_unknown_label} 张标签不在模型中的照片和 {skipped_missing_file} 张文件已不存在的照片。",
    },
    "admin_model.progress.features": {
        "en": "Backbone features: {done}/{total}",
        "zh": "骨干网络特征：{done}/{total}",
    },
    "admin_model.progress.epoch": {
        "en": "Epoch {epoch}/{epochs}: validation accuracy {val_acc} (best {best_val_acc})",
        "zh": "第 {epoch}/{epochs} 轮：验证准确率 {val_acc}（最佳 {best_val_acc}）",
    },
    "admin_model.progress.early_stop": {
        "en": "Stopped early after epoch {epoch}; keeping epoch {best_epoch}.",
        "zh": "第 {epoch} 轮后提前停止；保留第 {best_epoch} 轮的权重。",
    },
    "admin_model.progress.cancelling": {"en": "Cancelling…", "zh": "正在取消…"},
    # Phase names, from the job's progress events.
    "admin_model.phase.starting": {"en": "starting", "zh": "启动中"},
    "admin_model.phase.prepare": {"en": "collecting data", "zh": "收集数据"},
    "admin_model.phase.load_data": {"en": "loading data", "zh": "加载数据"},
    "admin_model.phase.weights": {"en": "loading weights", "zh": "加载权重"},
    "admin_model.phase.features": {"en": "computing features", "zh": "计算特征"},
    "admin_model.phase.train": {"en": "training", "zh": "训练"},
    "admin_model.phase.calibrate": {"en": "calibrating", "zh": "校准"},
    "admin_model.phase.save": {"en": "saving", "zh": "保存"},
    "admin_model.phase.gate": {"en": "comparing with the serving model", "zh": "与当前模型比较"},
    "admin_model.phase.finishing": {"en": "finishing", "zh": "收尾"},
    "admin_model.phase.done": {"en": "done", "zh": "完成"},
    "admin_model.phase.failed": {"en": "failed", "zh": "失败"},
    "admin_model.phase.cancelled": {"en": "cancelled", "zh": "已取消"},
    # The result, sent as a new message (the caption of the confusion matrix).
    "admin_model.result.promoted": {
        "en": "✅ Candidate {version} passed the gate and now serves in place of {previous}.",
        "zh": "✅ 候选模型 {version} 通过检验，已替换 {previous} 开始服务。",
    },
    "admin_model.result.rejected": {
        "en": "⛔ Candidate {version} was not promoted: it is worse than {previous} on {split}. {previous} keeps serving.",
        "zh": "⛔ 候选模型 {version} 未被采用：它在{split}上不如 {previous}。继续使用 {previous}。",
    },
    "admin_model.result.promote_failed": {
        "en": "⚠️ Candidate {version} passed the gate, but switching to it failed. {previous} keeps serving.\nDetails: {error}",
        "zh": "⚠️ 候选模型 {version} 通过了检验，但切换失败。继续使用 {previous}。\n技术细节：{error}",
    },
    # One line per gate split; {split} is an "admin_model.split_heading.*" text.
    "admin_model.result.split": {
        "en": "{split}: candidate {candidate} vs serving {serving} (photos: {samples})",
        "zh": "{split}：候选 {candidate}，当前 {serving}（{samples} 张照片）",
    },
    "admin_model.result.holdout_empty": {
        "en": "No corrected photos were held out, so the gate used the base validation split only.",
        "zh": "没有留作检验的更正照片，因此只用基础验证集进行检验。",
    },
    "admin_model.result.negatives": {
        "en": "Rejection threshold fitted with {not_flower} “not a flower” and {unknown_species} “not in this list” photos.",
        "zh": "拒识阈值用 {not_flower} 张“不是花”和 {unknown_species} 张“不在列表中”照片拟合。",
    },
    "admin_model.result.caption": {
        "en": "Confusion matrix of {version} on the base validation split.",
        "zh": "{version} 在基础验证集上的混淆矩阵。",
    },
    # Split names inside a sentence, and as the first word of a gate line.
    "admin_model.split.base_val": {"en": "the base validation split", "zh": "基础验证集"},
    "admin_model.split.corrections_holdout": {"en": "the held-out corrections", "zh": "留出的更正照片"},
    "admin_model.split_heading.base_val": {"en": "Base validation split", "zh": "基础验证集"},
    "admin_model.split_heading.corrections_holdout": {"en": "Held-out corrections", "zh": "留出的更正照片"},
    "admin_model.result.failed": {
        "en": "❌ Retraining run #{run_id} failed. The serving model {version} is unchanged.\nDetails: {error}",
        "zh": "❌ 重新训练 #{run_id} 失败。当前模型 {version} 保持不变。\n技术细节：{error}",
    },
    "admin_model.result.cancelled": {
        "en": "Retraining run #{run_id} was cancelled. The serving model {version} is unchanged.",
        "zh": "重新训练 #{run_id} 已取消。当前模型 {version} 保持不变。",
    },
    "admin_model.result.stale": {
        "en": "❌ The bot restarted while retraining run #{run_id} was in progress, so the run is marked failed. Start it again with /retrain.",
        "zh": "❌ 重新训练 #{run_id} 进行期间机器人重启了，该次训练已标记为失败。请用 /retrain 重新开始。",
    },
    "admin_model.error.killed": {
        "en": "the training process was killed by signal {signal}",
        "zh": "训练进程被信号 {signal} 终止",
    },
    "admin_model.error.exit_status": {
        "en": "the training process exited with status {status}",
        "zh": "训练进程以状态 {status} 退出",
    },
    # /retrain status and /retrain cancel
    "admin_model.status.running": {
        "en": "Retraining run #{run_id} is running: {phase}, for {elapsed}, started by {admin}.",
        "zh": "重新训练 #{run_id} 正在进行：{phase}，已用时 {elapsed}，由 {admin} 发起。",
    },
    "admin_model.status.idle": {"en": "No retraining is running.", "zh": "当前没有正在进行的重新训练。"},
    "admin_model.status.last": {
        "en": "Last run #{run_id}: {status}, finished {finished}{details}.",
        "zh": "上一次 #{run_id}：{status}，结束于 {finished}{details}。",
    },
    "admin_model.status.candidate": {"en": ", candidate {version}", "zh": "，候选模型 {version}"},
    # The stored error of a run, as recorded (often English), on a line after the translated text.
    "admin_model.error.details": {"en": "Details: {error}", "zh": "技术细节：{error}"},
    "admin_model.run_status.succeeded": {"en": "promoted", "zh": "已采用"},
    "admin_model.run_status.rejected": {"en": "not promoted", "zh": "未采用"},
    "admin_model.run_status.failed": {"en": "failed", "zh": "失败"},
    "admin_model.run_status.cancelled": {"en": "cancelled", "zh": "已取消"},
    "admin_model.run_status.running": {"en": "running", "zh": "进行中"},
    "admin_model.cancel.none": {"en": "No retraining is running.", "zh": "当前没有正在进行的重新训练。"},
    "admin_model.cancel.requested": {
        "en": "Cancelling retraining run #{run_id}…",
        "zh": "正在取消重新训练 #{run_id}…",
    },
    "admin_model.cancel.too_late": {
        "en": "Run #{run_id} has finished training and is being registered; it can no longer be cancelled. Use /rollback afterwards if needed.",
        "zh": "#{run_id} 已完成训练，正在登记，无法再取消。如有需要，请稍后使用 /rollback。",
    },
    "admin_model.cancel.elsewhere": {
        "en": "Run #{run_id} is marked running but no training process belongs to this bot process; it was marked failed.",
        "zh": "#{run_id} 被标记为进行中，但本机器人进程中没有对应的训练进程；已将其标记为失败。",
    },
    # /model
    "admin_model.model.none": {
        "en": "No model is registered as serving yet. The bot serves {version}.",
        "zh": "尚未登记正在服务的模型。机器人当前使用 {version}。",
    },
    "admin_model.model.serving": {
        "en": "Serving model: {version}\nCreated: {created}\nServing since: {promoted}",
        "zh": "当前模型：{version}\n创建时间：{created}\n开始服务：{promoted}",
    },
    "admin_model.model.val": {
        "en": "Validation accuracy (top-1): {top1}",
        "zh": "验证准确率（top-1）：{top1}",
    },
    "admin_model.model.gate": {"en": "At its gate:", "zh": "上线检验时："},
    "admin_model.model.previous": {"en": "/rollback would return to {version}.", "zh": "/rollback 将回退到 {version}。"},
    "admin_model.model.no_previous": {"en": "There is no previous model to roll back to.", "zh": "没有可回退的上一个模型。"},
    "admin_model.model.recent": {"en": "Recent versions:", "zh": "最近的版本："},
    "admin_model.model.recent_line": {"en": "• {version}: {status}, {created}", "zh": "• {version}：{status}，{created}"},
    "admin_model.model_status.serving": {"en": "serving", "zh": "服务中"},
    "admin_model.model_status.candidate": {"en": "candidate", "zh": "候选"},
    "admin_model.model_status.rejected": {"en": "rejected", "zh": "未采用"},
    "admin_model.model_status.retired": {"en": "retired", "zh": "已退役"},
    # /rollback
    "admin_model.rollback.done": {
        "en": "Rolled back: {version} serves again in place of {previous}.",
        "zh": "已回退：{version} 重新开始服务，替换 {previous}。",
    },
    "admin_model.rollback.no_previous": {
        "en": "There is no previous model to roll back to.",
        "zh": "没有可回退的上一个模型。",
    },
    "admin_model.rollback.running": {
        "en": "Retraining run #{run_id} is running. Wait for it to finish or use /retrain cancel first.",
        "zh": "重新训练 #{run_id} 正在进行。请等它结束，或先使用 /retrain cancel。",
    },
    "admin_model.rollback.failed": {
        "en": "Rolling back to {version} failed. {previous} keeps serving.\nDetails: {error}",
        "zh": "回退到 {version} 失败。继续使用 {previous}。\n技术细节：{error}",
    },
    "admin_model.not_available": {"en": "n/a", "zh": "无"},
}
