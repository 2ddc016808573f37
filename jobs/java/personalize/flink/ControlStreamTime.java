package personalize.flink;

import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkGeneratorSupplier;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;

/**
 * The event time of a control stream (rule commands, model snapshots): none. Its records keep their
 * timestamps, but the stream is idle from its first periodic emit on and emits no watermark, so it
 * never holds back the event time of the operator it is broadcast to (that operator follows its
 * event input alone).
 *
 * <p>Applied with {@code assignTimestampsAndWatermarks}, whose operator drops the watermarks and
 * the idle or active status of its input (all but the final watermark of a bounded input). Without
 * it, the snapshots' own event time held a user operator's event time at the last snapshot's for
 * good when the snapshot source was never marked idle after it (the fault suite's "did not settle",
 * docs/operations.md).
 */
public final class ControlStreamTime<T> implements WatermarkStrategy<T> {

    private static final long serialVersionUID = 1L;

    @Override
    public WatermarkGenerator<T> createWatermarkGenerator(WatermarkGeneratorSupplier.Context context) {
        return new WatermarkGenerator<T>() {
            @Override
            public void onEvent(T event, long eventTimestamp, WatermarkOutput output) {}

            @Override
            public void onPeriodicEmit(WatermarkOutput output) {
                output.markIdle();
            }
        };
    }
}
