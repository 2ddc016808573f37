package personalize.flink;

import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * Groups the records between two watermarks into one list per shard, so the Python function after
 * it is called once per list instead of once per record (docs/architecture.md, "Micro-batches").
 *
 * <p>Nothing is held across a checkpoint: the buffer is emitted before every barrier
 * ({@link #prepareSnapshotPreBarrier}), so a list belongs to the checkpoint its records do and no
 * operator state is needed for exactly-once. A watermark is forwarded only after the records that
 * arrived before it, so downstream event time sees the order it would see record by record. A list
 * is emitted at the latest {@code intervalMs} after its first record, or when {@code maxRecords}
 * are buffered.
 *
 * <p>Before every barrier (and at the end of input), after the lists, every shard that got a list
 * since the last barrier also gets an empty list: the marker on which the Python function writes the
 * shard's users' changed values into Flink's state (its decoded-value cache, {@code state/cache.py}),
 * so they are in the checkpoint that the barrier starts.
 *
 * <p>Input: {@code Row(Integer shard, String record)}. Output: {@code Row(shard, String[] records)}, in
 * arrival order. Records travel as text, not as rows: PyFlink's Java-to-Python conversion reuses one
 * buffer per row type, so every row of a {@code Row[]} would reach Python as the last one.
 */
public final class MicroBatchOperator extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, ProcessingTimeCallback {

    private static final long serialVersionUID = 1L;

    private final long intervalMs;
    private final int maxRecords;

    private transient Map<Integer, List<String>> buffer;
    private transient Set<Integer> sentSinceBarrier;
    private transient int buffered;
    private transient boolean timerSet;

    public MicroBatchOperator(long intervalMs, int maxRecords) {
        if (intervalMs <= 0 || maxRecords <= 0) {
            throw new IllegalArgumentException("intervalMs and maxRecords must be positive");
        }
        this.intervalMs = intervalMs;
        this.maxRecords = maxRecords;
    }

    @Override
    public void open() throws Exception {
        super.open();
        buffer = new LinkedHashMap<>();
        sentSinceBarrier = new LinkedHashSet<>();
    }

    @Override
    public void processElement(StreamRecord<Row> element) throws Exception {
        Row row = element.getValue();
        Integer shard = (Integer) row.getField(0);
        buffer.computeIfAbsent(shard, key -> new ArrayList<>()).add((String) row.getField(1));
        buffered++;
        if (buffered >= maxRecords) {
            flush();
        } else if (!timerSet) {
            timerSet = true;
            ProcessingTimeCallback callback = this;
            getProcessingTimeService().registerTimer(
                    getProcessingTimeService().getCurrentProcessingTime() + intervalMs, callback);
        }
    }

    @Override
    public void onProcessingTime(long time) {
        timerSet = false;
        flush();
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        flush();
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        flush();
        mark();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void finish() throws Exception {
        flush();
        mark();
        super.finish();
    }

    private void mark() {
        for (Integer shard : sentSinceBarrier) {
            output.collect(new StreamRecord<>(Row.of(shard, new String[0])));
        }
        sentSinceBarrier.clear();
    }

    private void flush() {
        if (buffered == 0) {
            return;
        }
        for (Map.Entry<Integer, List<String>> entry : buffer.entrySet()) {
            List<String> records = entry.getValue();
            output.collect(new StreamRecord<>(Row.of(entry.getKey(), records.toArray(new String[0]))));
            sentSinceBarrier.add(entry.getKey());
        }
        buffer.clear();
        buffered = 0;
    }
}
