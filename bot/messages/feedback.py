"""Messages and button labels for corrections, /history, /forget and /stats."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    # Buttons under an answer.
    "feedback.button.pick": {"en": "✓ {name}", "zh": "✓ {name}"},
    "feedback.button.none_of_these": {"en": "None of these", "zh": "都不是"},
    "feedback.button.not_flower": {"en": "Not a flower", "zh": "不是花"},
    "feedback.button.unknown_species": {"en": "Not in this list", "zh": "不在列表中"},
    "feedback.button.candidate": {"en": "{name} ({percent})", "zh": "{name}（{percent}）"},
    "feedback.button.more": {"en": "More…", "zh": "更多…"},
    "feedback.button.previous": {"en": "‹ Previous", "zh": "‹ 上一页"},
    "feedback.button.type_name": {"en": "Type the name", "zh": "输入名称"},
    "feedback.button.back": {"en": "« Back", "zh": "« 返回"},
    "feedback.button.change": {"en": "Change", "zh": "修改"},
    "feedback.button.cancel_typing": {"en": "Cancel", "zh": "取消"},
    # The line added to an answer once feedback is recorded.
    "feedback.recorded.confirmed": {"en": "Recorded: {name} ✓", "zh": "已记录：{name} ✓"},
    "feedback.recorded.corrected": {"en": "Recorded: {name} ✓ (corrected)", "zh": "已记录：{name} ✓（已更正）"},
    "feedback.recorded.not_flower": {"en": "Recorded: not a flower ✓", "zh": "已记录：不是花 ✓"},
    "feedback.recorded.unknown_species": {
        "en": "Recorded: a species not in my list ✓",
        "zh": "已记录：不在列表中的花 ✓",
    },
    # Short notices shown by answerCallbackQuery.
    "feedback.notice.recorded": {"en": "Thanks, recorded.", "zh": "谢谢，已记录。"},
    "feedback.notice.already_recorded": {"en": "Already recorded.", "zh": "已经记录过了。"},
    "feedback.notice.only_sender": {
        "en": "Only the person who sent the photo can correct this answer.",
        "zh": "只有发送这张照片的人可以更正这个答案。",
    },
    "feedback.notice.invalid_button": {
        "en": "This button is not valid. Send the photo again to get new buttons.",
        "zh": "这个按钮无效。请重新发送照片以获取新的按钮。",
    },
    "feedback.notice.prediction_gone": {
        "en": "This answer is no longer stored, so it cannot be corrected.",
        "zh": "这个答案已不再保存，无法更正。",
    },
    "feedback.notice.no_more_candidates": {"en": "No more candidates.", "zh": "没有更多候选了。"},
    "feedback.notice.all_listed": {
        "en": "The answer already lists every species I know.",
        "zh": "回答里已经列出了我认识的所有花。",
    },
    "feedback.notice.type_name": {"en": "Type the species name.", "zh": "请输入花的名称。"},
    "feedback.notice.typing_cancelled": {"en": "Cancelled.", "zh": "已取消。"},
    "feedback.notice.failed": {
        "en": "Something went wrong, nothing was changed. Try again.",
        "zh": "出错了，没有做任何更改。请再试一次。",
    },
    # Typed names.
    "feedback.type_name.prompt": {
        "en": "Type the name of the species, in English or Chinese. A close spelling is enough.",
        "zh": "请输入花的名称，中文或英文均可，拼写接近即可。",
    },
    "feedback.type_name.placeholder": {"en": "e.g. sunflower", "zh": "例如：向日葵"},
    "feedback.type_name.matches": {
        "en": "Species matching “{query}”. Tap the right one, or type another name:",
        "zh": "与“{query}”相符的花。请点选正确的一个，或输入其他名称：",
    },
    "feedback.type_name.no_match": {
        "en": "No species I know matches “{query}”. Type another name, tap “Not in this list” "
        "if your flower is a species I do not know, or tap Cancel.",
        "zh": "我认识的花中没有与“{query}”相符的。请输入其他名称；如果这种花我还不认识，请点“不在列表中”；"
        "或点“取消”。",
    },
    "feedback.type_name.too_long": {
        "en": "That name is too long. Type at most {limit} characters, or tap Cancel.",
        "zh": "名称太长了，最多输入 {limit} 个字符；或点“取消”。",
    },
    "feedback.type_name.empty": {
        "en": "That message has no name in it. Type the name of the species, in English or Chinese, or tap Cancel.",
        "zh": "消息里没有名称。请输入花的名称，中文或英文均可；或点“取消”。",
    },
    "feedback.type_name.cancelled": {"en": "Naming cancelled.", "zh": "已取消输入名称。"},
    # Command menu descriptions.
    "history.command_description": {"en": "Your last photos and your corrections", "zh": "你最近的照片和更正"},
    "forget.command_description": {"en": "Delete your photos and answers", "zh": "删除你的照片和答案"},
    "stats.command_description": {"en": "Prediction and feedback statistics (admins)", "zh": "预测与反馈统计（管理员）"},
    # /history
    "history.title": {"en": "Your last {count} photos:", "zh": "你最近的 {count} 张照片："},
    "history.empty": {"en": "You have not sent any photos yet.", "zh": "你还没有发送过照片。"},
    "history.line": {"en": "{date} · {name} {percent}", "zh": "{date} · {name} {percent}"},
    "history.confirmed": {"en": "you confirmed it", "zh": "你已确认"},
    "history.corrected": {"en": "you corrected it to {name}", "zh": "你更正为{name}"},
    "history.not_flower": {"en": "you marked it not a flower", "zh": "你标记为不是花"},
    "history.unknown_species": {
        "en": "you marked it a species not in my list",
        "zh": "你标记为不在列表中的花",
    },
    "history.no_feedback": {"en": "no feedback", "zh": "未反馈"},
    # /forget
    "forget.question": {
        "en": "Delete all your photos, answers and corrections? This cannot be undone.",
        "zh": "要删除你所有的照片、答案和更正吗？此操作无法撤销。",
    },
    "forget.button.confirm": {"en": "Yes, delete everything", "zh": "是的，全部删除"},
    "forget.button.cancel": {"en": "Cancel", "zh": "取消"},
    "forget.done": {
        "en": "Done. Your photos, answers and corrections are deleted.",
        "zh": "已完成。你的照片、答案和更正都已删除。",
    },
    "forget.nothing": {"en": "There was nothing of yours to delete.", "zh": "没有需要删除的数据。"},
    "forget.cancelled": {"en": "Nothing was deleted.", "zh": "没有删除任何内容。"},
    "forget.expired": {
        "en": "This question has expired. Send /forget again.",
        "zh": "这个确认已过期。请重新发送 /forget。",
    },
    "forget.only_owner": {"en": "Only the person who sent /forget can answer this.", "zh": "只有发送 /forget 的人可以回答。"},
    # /stats
    "stats.admins_only": {"en": "This command is for admins only.", "zh": "此命令仅限管理员使用。"},
    "stats.title": {"en": "flowerbot statistics", "zh": "flowerbot 统计"},
    "stats.totals": {
        "en": "Predictions: {predictions}\nWith feedback: {with_feedback} ({feedback_share})\n"
        "Confirmed: {confirmed} · corrected: {corrected} · not a flower: {not_flower} "
        "· not in the list: {unknown_species}",
        "zh": "预测：{predictions}\n有反馈：{with_feedback}（{feedback_share}）\n"
        "确认：{confirmed} · 更正：{corrected} · 不是花：{not_flower} · 不在列表中：{unknown_species}",
    },
    "stats.by_version.title": {
        "en": "Accuracy by model version, by feedback (a species not in the list counts as wrong):",
        "zh": "各模型版本的准确率（据反馈；不在列表中的花算作答错）：",
    },
    "stats.by_version.line": {
        "en": "{version}: {accuracy} of {rated} rated ({predictions} predictions)",
        "zh": "{version}：{accuracy}，共 {rated} 条反馈（{predictions} 次预测）",
    },
    "stats.by_version.none": {"en": "No feedback yet.", "zh": "还没有反馈。"},
    "stats.confused.title": {
        "en": "Most confused (predicted → actually):",
        "zh": "最常混淆（预测 → 实际）：",
    },
    "stats.confused.line": {"en": "{predicted} → {actual}: {count}", "zh": "{predicted} → {actual}：{count}"},
    "stats.confused.none": {"en": "No corrections yet.", "zh": "还没有更正。"},
}
